"""The memory-bank projector shared by both modalities (Song et al., BIBM 2024).

K learnable memory vectors query the token or atom states of either modality through one
multi-head attention. Because the same memories summarise text and molecules, both land in a
common set of "slots", which is what aligns the modalities before the loss sees them. With the
memory bank switched off the projector falls back to masked mean pooling, for ablation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid positions: [B, L, d] with bool mask [B, L] -> [B, d]."""
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class MemoryBankProjector(nn.Module):
    def __init__(
        self,
        dim: int,
        num_memories: int = 28,
        num_heads: int = 4,
        dropout: float = 0.1,
        use_memory: bool = True,
        scale_init: float = 0.07,
    ) -> None:
        super().__init__()
        self.use_memory = use_memory
        if use_memory:
            # Every slot is learnable (the official code froze one at zero via padding_idx).
            self.memory = nn.Parameter(torch.randn(num_memories, dim) / math.sqrt(dim))
            # No biases: the key bias cancels in the softmax, value/output biases only shift the
            # pooled vector (removed by the head's BatchNorm) and the query bias is absorbed by
            # the learnable memories. Kept, they get zero gradient that Adam turns into noise.
            self.attention = nn.MultiheadAttention(
                dim, num_heads, dropout=dropout, batch_first=True, bias=False
            )
        self.log_scale = nn.Parameter(torch.tensor(scale_init))
        self.head = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.Tanh())

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One vector per item, before the shared head."""
        if not self.use_memory:
            return masked_mean(states, mask)
        queries = self.memory.unsqueeze(0).expand(states.shape[0], -1, -1)
        attended, _ = self.attention(
            queries, states, states, key_padding_mask=~mask, need_weights=False
        )
        return attended.mean(dim=1)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(states, mask) * torch.exp(self.log_scale)
        return F.normalize(self.head(pooled), dim=-1)
