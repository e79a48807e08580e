"""Molecule tower: GINE message passing in dense padded form (plus a packed twin for training).

Every graph in a batch is padded to the same (max_nodes, max_edges). Messages are gathered
from source atoms with an index gather and summed into destination atoms with a one-hot
incidence matmul instead of a scatter-add, so the exported ONNX graph has static shapes and no
scatter with duplicate indices (ONNX Runtime and TensorRT run it as-is). The result equals
torch-geometric's GINEConv on the unpadded graphs (checked in tests/unit/test_graph_tower.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from molret.graphs import ATOM_FEATURE_SIZES, BOND_FEATURE_SIZES

from .projector import segment_sums

# Atom counts are divided by this before the fingerprint MLP: a typical ChEBI-20 molecule has
# ~32 atoms, so the summed embedding keeps the scale of one atom's while still counting.
COUNT_SCALE = 32.0


class CategoricalEmbedding(nn.Module):
    """Sum of one embedding per categorical column, stored in one table with column offsets."""

    def __init__(self, sizes: Sequence[int], dim: int) -> None:
        super().__init__()
        offsets = torch.tensor([0, *list(sizes)[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.table = nn.Embedding(int(sum(sizes)), dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.table(features + self.offsets).sum(dim=-2)


def gather_sources(h: torch.Tensor, edge_src: torch.Tensor) -> torch.Tensor:
    """States of each edge's source atom: [B, N, H] x [B, E] -> [B, E, H]."""
    index = edge_src.unsqueeze(-1).expand(-1, -1, h.shape[-1])
    return torch.gather(h, 1, index)


def incidence(
    edge_dst: torch.Tensor,
    edge_mask: torch.Tensor,
    max_nodes: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """[B, N, E] one-hot of destination atoms; masked edges are all-zero columns."""
    nodes = torch.arange(max_nodes, device=edge_dst.device).view(1, -1, 1)
    hits = (edge_dst.unsqueeze(1) == nodes) & edge_mask.unsqueeze(1)
    return hits.to(dtype)


class DenseGINELayer(nn.Module):
    """out_i = MLP((1 + eps) * h_i + sum_{j->i} ReLU(h_j + e_ji)), as in GINEConv (Hu et al.)."""

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.eps = nn.Parameter(torch.zeros(1))
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )

    def aggregate(
        self, h: torch.Tensor, edge_emb: torch.Tensor, edge_src: torch.Tensor, inc: torch.Tensor
    ) -> torch.Tensor:
        messages = torch.relu(gather_sources(h, edge_src) + edge_emb)
        return torch.bmm(inc, messages)

    def forward(
        self, h: torch.Tensor, edge_emb: torch.Tensor, edge_src: torch.Tensor, inc: torch.Tensor
    ) -> torch.Tensor:
        return self.mlp((1 + self.eps) * h + self.aggregate(h, edge_emb, edge_src, inc))

    def forward_packed(
        self,
        h: torch.Tensor,
        edge_emb: torch.Tensor,
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
    ) -> torch.Tensor:
        """The same layer on packed nodes [n, H] and global edge indices (training path)."""
        messages = torch.relu(h.index_select(0, edge_src) + edge_emb)
        aggregated = torch.zeros_like(h).index_add_(0, edge_dst, messages)
        return self.mlp((1 + self.eps) * h + aggregated)


class MoleculeTower(nn.Module):
    """Atom states [B, N, d] for the memory-bank projector; padding atoms are zeroed."""

    def __init__(self, hidden: int, out_dim: int, num_layers: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.atom_embedding = CategoricalEmbedding(ATOM_FEATURE_SIZES, hidden)
        self.bond_embeddings = nn.ModuleList(
            CategoricalEmbedding(BOND_FEATURE_SIZES, hidden) for _ in range(num_layers)
        )
        self.layers = nn.ModuleList(DenseGINELayer(hidden, dropout) for _ in range(num_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, out_dim),
            nn.LayerNorm(out_dim, bias=False),  # see TextHead: a shift is removed downstream
        )

    def forward(
        self,
        atom_features: torch.Tensor,
        bond_features: torch.Tensor,
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
        atom_mask: torch.Tensor,
        edge_mask: torch.Tensor,
    ) -> torch.Tensor:
        dtype = self.atom_embedding.table.weight.dtype
        node_mask = atom_mask.unsqueeze(-1).to(dtype)
        inc = incidence(edge_dst, edge_mask, atom_features.shape[1], dtype)
        h = self.atom_embedding(atom_features) * node_mask
        for bond_embedding, layer, norm in zip(
            self.bond_embeddings, self.layers, self.norms, strict=True
        ):
            update = layer(h, bond_embedding(bond_features), edge_src, inc)
            h = norm(h + self.dropout(torch.relu(update))) * node_mask
        return self.out(h) * node_mask

    def forward_packed(
        self,
        atom_features: torch.Tensor,
        bond_features: torch.Tensor,
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
    ) -> torch.Tensor:
        """Atom states [n_atoms_total, d] of a packed batch (no padding at all).

        Same parameters and arithmetic as `forward` on the valid atoms. Training and PyTorch
        evaluation use it: with ChEBI-20's long-tailed sizes a padded batch spends most of its
        compute on padding, and index_add (a scatter) is fine outside the exported graph.
        """
        h = self.atom_embedding(atom_features)
        for bond_embedding, layer, norm in zip(
            self.bond_embeddings, self.layers, self.norms, strict=True
        ):
            update = layer.forward_packed(h, bond_embedding(bond_features), edge_src, edge_dst)
            h = norm(h + self.dropout(torch.relu(update)))
        return self.out(h)


class FingerprintBranch(nn.Module):
    """A learned Morgan count fingerprint beside the message passing.

    Every atom's categorical features (element, charge, ..., and its hashed radius-1 and
    radius-2 Morgan identifiers) are embedded and *summed* over the molecule: a linear map of
    the molecule's hashed substructure counts, which is what the Morgan-count yardstick sees.
    An MLP of it joins the projector's pooled vector. The memory-bank attention averages atom
    states, so on its own it cannot tell a C16 from a C18 chain; exact counts can.
    Inputs are the atom features the tower already gets: no new bundle input.
    """

    def __init__(self, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.embedding = CategoricalEmbedding(ATOM_FEATURE_SIZES, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def counts(self, atom_features: torch.Tensor, atom_mask: torch.Tensor) -> torch.Tensor:
        """The learned count vector [B, hidden] of padded atoms [B, N, F], bool mask [B, N]."""
        per_atom = self.embedding(atom_features)
        return (per_atom * atom_mask.unsqueeze(-1).to(per_atom.dtype)).sum(dim=1) / COUNT_SCALE

    def forward(self, atom_features: torch.Tensor, atom_mask: torch.Tensor) -> torch.Tensor:
        """Padded atoms [B, N, F] with a bool mask [B, N] -> [B, out_dim]."""
        return self.mlp(self.counts(atom_features, atom_mask))

    def forward_packed(self, atom_features: torch.Tensor, atom_counts: list[int]) -> torch.Tensor:
        """Back-to-back atoms [n_atoms_total, F] of molecules with `atom_counts` atoms."""
        return self.from_atom_sums(segment_sums(self.embedding(atom_features), atom_counts))

    def from_atom_sums(self, sums: torch.Tensor) -> torch.Tensor:
        """Per-molecule sums of the atom embeddings [B, hidden] -> [B, out_dim], however they
        were summed (padded, packed, or torch-geometric's scatter in the reference)."""
        return self.mlp(sums / COUNT_SCALE)


class KeysBranch(nn.Module):
    """MACCS keys (RDKit's 166 curated substructure/count patterns) -> MLP -> the projector's
    pooled vector, beside the fingerprint branch. The Morgan/MACCS yardstick loses 3.8 Hits@10
    without them; patterns such as ring sizes and heteroatom counts are global properties that
    a few message-passing steps see poorly. The keys are a bundle input (`molecule_keys`),
    computed by the featurizer only for models that take them."""

    def __init__(self, n_keys: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(n_keys, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        """float [B, n_keys] of 0/1 -> [B, out_dim]."""
        return self.mlp(keys)
