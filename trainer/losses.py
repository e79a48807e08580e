"""Every training loss lives here: first-order (triplet, InfoNCE), second-order KL, WGAN-GP.

All take the global batch of L2-normalised embeddings (text[i] pairs with molecule[i]); under
torchrun the caller gathers them across processes first (molret.trainer.distributed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def euclidean_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[M, d] x [N, d] -> [M, N]; clamped before sqrt so the diagonal has zero gradient."""
    squared = (x * x).sum(1, keepdim=True) + (y * y).sum(1).unsqueeze(0) - 2.0 * x @ y.T
    return squared.clamp(min=1e-12).sqrt()


def batch_hard_triplet(text: torch.Tensor, mol: torch.Tensor, margin: float) -> torch.Tensor:
    """Batch-hard triplet loss over the concatenated modalities, as the paper's code does.

    Each of the 2B items has one positive (its partner in the other modality, besides itself);
    its hardest negative is the closest item of any other pair, in either modality.
    """
    feats = torch.cat([text, mol], dim=0)
    labels = torch.arange(text.shape[0], device=text.device).repeat(2)
    dist = euclidean_distances(feats, feats)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    hardest_positive = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    hardest_negative = dist.masked_fill(same, float("inf")).amin(dim=1)
    return F.relu(hardest_positive - hardest_negative + margin).mean()


def info_nce(text: torch.Tensor, mol: torch.Tensor, log_temperature: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy over cosine similarities with a learnable temperature."""
    logits = text @ mol.T / torch.exp(log_temperature)
    targets = torch.arange(text.shape[0], device=text.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def row_kl(target_logits: torch.Tensor, input_logits: torch.Tensor) -> torch.Tensor:
    """mean_i KL(softmax(target_i) || softmax(input_i)), summed over each row."""
    log_p = F.log_softmax(target_logits, dim=-1)
    log_q = F.log_softmax(input_logits, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


@dataclass(frozen=True)
class SecondOrderTerms:
    intra: torch.Tensor  # KL(P_MM || P_TT) + KL(P_TT || P_MM)
    cross: torch.Tensor  # KL(sg P_MM || P_TM) + KL(sg P_TT || P_MT)


def relation_logits(x: torch.Tensor, y: torch.Tensor, mode: str) -> torch.Tensor:
    """Scores whose row-wise softmax is the relation distribution.

    "distance" copies the official code (softmax of raw Euclidean distances, so far items get
    the most mass); "similarity" uses negative distance, where near items get the most mass.
    """
    dist = euclidean_distances(x, y)
    if mode == "distance":
        return dist
    if mode == "similarity":
        return -dist
    raise ValueError(f"unknown second-order mode {mode!r}: use 'distance' or 'similarity'")


def second_order_losses(
    text: torch.Tensor,
    mol: torch.Tensor,
    mode: str = "similarity",
    intra_temperature: float = 1.0,
    cross_temperature: float = 1.0,
) -> SecondOrderTerms:
    tt = relation_logits(text, text, mode)
    mm = relation_logits(mol, mol, mode)
    tm = relation_logits(text, mol, mode)
    mt = relation_logits(mol, text, mode)
    ti, tc = intra_temperature, cross_temperature
    intra = row_kl(mm / ti, tt / ti) + row_kl(tt / ti, mm / ti)
    cross = row_kl(mm.detach() / tc, tm / tc) + row_kl(tt.detach() / tc, mt / tc)
    return SecondOrderTerms(intra=intra, cross=cross)


class Critic(nn.Module):
    """WGAN critic telling pooled text features from pooled molecule features."""

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2), nn.Linear(hidden, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: (||grad critic(mix)|| - 1)^2 on random interpolates (Gulrajani et al.)."""
    alpha = torch.rand(real.shape[0], 1, device=real.device)
    mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
    return ((grad.norm(2, dim=1) - 1) ** 2).mean()


def critic_loss(
    critic: Critic, text_pooled: torch.Tensor, mol_pooled: torch.Tensor
) -> torch.Tensor:
    """Loss of the critic step (inputs detached: the encoders are not updated here)."""
    real, fake = text_pooled.detach(), mol_pooled.detach()
    wasserstein = critic(fake).mean() - critic(real).mean()
    return wasserstein + 10.0 * gradient_penalty(critic, real, fake)


def generator_loss(critic: Critic, mol_pooled: torch.Tensor) -> torch.Tensor:
    """Pulls molecule features toward the text distribution, as judged by the critic."""
    return -critic(mol_pooled).mean()
