"""Data-parallel training under torchrun: global-batch losses and global-batch statistics.

Contrastive and second-order losses compare every pair in the batch, so each process gathers
the embeddings of all processes (with gradient) and computes the loss on the global batch.
Gradients are then averaged across processes; because every process computes the same
global loss, the average equals the single-process gradient on the same global batch.
BatchNorm in the shared head likewise normalises with global-batch statistics, since
torch's SyncBatchNorm refuses CPU tensors and gloo training must match too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the torchrun group when launched by torchrun; single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every process in rank order; gradients flow back to each owner."""
    if not is_distributed():
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


def average_gradients(module: nn.Module) -> None:
    """All-reduce the mean gradient in one flat buffer (a minimal DDP, deterministic order)."""
    if not is_distributed():
        return
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p))
        offset += n


def broadcast_parameters(module: nn.Module) -> None:
    """Start every process from rank 0's weights."""
    if not is_distributed():
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics come from the global batch across processes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        full = gather_with_grad(x)
        mean = full.mean(0)
        var = full.var(0, unbiased=False)
        if self.track_running_stats and self.running_mean is not None:
            n = full.shape[0]
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * var * n / max(n - 1, 1))
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
        normed = (x - mean) / torch.sqrt(var + self.eps)
        if self.weight is None or self.bias is None:
            return normed
        return normed * self.weight + self.bias


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm1d for GlobalBatchNorm1d, keeping weights and running stats."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm1d) and not isinstance(child, GlobalBatchNorm1d):
            replacement = GlobalBatchNorm1d(
                child.num_features, child.eps, child.momentum, child.affine,
                child.track_running_stats,
            )  # fmt: skip
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            convert_batchnorm(child)
    return module


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
