"""Checkpoints as safetensors plus JSON: never pickle, so loading a run cannot execute code.

Files are written atomically (temp file, fsync, rename). `best.safetensors` holds the model
weights chosen on validation; `last.safetensors` holds the full training state for resuming.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable state only: a frozen pretrained text encoder is not copied into every run."""
    state = model.state_dict()
    frozen = {
        name
        for name, p in model.named_parameters()
        if name.startswith("text_encoder.") and not p.requires_grad
    }
    return {
        name: t.detach().contiguous().clone()
        for name, t in state.items()
        if name not in frozen and not name.startswith("text_encoder.embeddings.position_ids")
    }


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = model_tensors(model)
    _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_weights(model: nn.Module, path: Path) -> None:
    _load_model_tensors(model, load_file(str(path)), path)


def _load_model_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if not m.startswith("text_encoder.")]
    if missing or unexpected:
        raise ValueError(
            f"{path}: checkpoint does not fit the model (missing {missing}, unexpected {unexpected})"
        )


def _flatten_optimizer(
    optimizer: torch.optim.Optimizer, prefix: str = "optim"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, pstate in state["state"].items():
        scalars["state"][str(pid)] = {}
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{pid}.{key}"] = value.contiguous()
            else:
                scalars["state"][str(pid)][key] = value
    return tensors, scalars


def _unflatten_optimizer(
    tensors: dict[str, torch.Tensor], scalars: dict[str, Any], prefix: str = "optim"
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(pid): dict(v) for pid, v in scalars["state"].items()}
    for name, tensor in tensors.items():
        head, _, rest = name.partition(".")
        if head != prefix:
            continue
        pid, key = rest.split(".", 1)
        state.setdefault(int(pid), {})[key] = tensor
    return {"state": state, "param_groups": scalars["param_groups"]}


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes: safetensors itself has no checksum, and a
    flipped bit in a resumed optimizer state would go unnoticed."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_training_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: dict[str, Any],
    extra_modules: dict[str, nn.Module] | None = None,
    extra_optimizers: dict[str, torch.optim.Optimizer] | None = None,
) -> None:
    """Everything needed to resume: weights (of the model and of training-only modules such as
    the loss's temperature or the WGAN critic), optimizers, scheduler, RNG and progress, in ONE
    safetensors file (scalars and a checksum in its metadata) so a kill can never leave a mixed
    checkpoint."""
    opt_tensors, opt_scalars = _flatten_optimizer(optimizer)
    tensors = {f"model.{k}": v for k, v in model_tensors(model).items()}
    tensors.update(opt_tensors)
    for prefix, module in (extra_modules or {}).items():
        tensors.update(
            {
                f"{prefix}.{k}": v.detach().contiguous().clone()
                for k, v in module.state_dict().items()
            }
        )
    extra_scalars = {}
    for prefix, extra in (extra_optimizers or {}).items():
        more, extra_scalars[prefix] = _flatten_optimizer(extra, prefix)
        tensors.update(more)
    tensors["rng.torch"] = torch.get_rng_state()
    record = {
        "progress": progress,
        "optimizer": opt_scalars,
        "extra_optimizers": extra_scalars,
        "scheduler": scheduler.state_dict(),
    }
    metadata = {"record": json.dumps(record), "sha256": tensors_digest(tensors)}
    _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_training_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    extra_modules: dict[str, nn.Module] | None = None,
    extra_optimizers: dict[str, torch.optim.Optimizer] | None = None,
) -> dict[str, Any]:
    """Verify the checksum first, then restore: a damaged file changes nothing."""
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata() or {}
    tensors = load_file(str(path))
    expected = metadata.get("sha256")
    if expected is None or tensors_digest(tensors) != expected:
        raise ValueError(
            f"{path}: checkpoint checksum mismatch (damaged or not a molret checkpoint)"
        )
    record = json.loads(metadata["record"])
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    _load_model_tensors(model, weights, path)
    optimizer.load_state_dict(_unflatten_optimizer(tensors, record["optimizer"]))
    for prefix, module in (extra_modules or {}).items():
        part = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        module.load_state_dict(part)
    for prefix, extra in (extra_optimizers or {}).items():
        extra.load_state_dict(
            _unflatten_optimizer(tensors, record["extra_optimizers"][prefix], prefix)
        )
    scheduler.load_state_dict(record["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    return dict(record["progress"])
