"""The dual encoder: text tower + molecule tower + the shared memory-bank projector.

`encode_text` / `encode_molecule` are the two calls that training, evaluation and export use.
With a frozen text encoder the model holds no encoder weights: it consumes the cached token
states of the encoder (molret.trainer.text_cache), and export attaches the same pretrained
encoder in front of the trained head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from molret.graphs import N_MOLECULE_KEYS, MolGraph, stack_keys

from .config import ModelConfig
from .graph_tower import FingerprintBranch, KeysBranch, MoleculeTower
from .projector import MemoryBankProjector, masked_mean, segment_sums


@dataclass
class GraphTensors:
    """A padded molecule batch as tensors (mirrors molret.featurize.GraphBatch)."""

    atom_features: torch.Tensor
    bond_features: torch.Tensor
    edge_src: torch.Tensor
    edge_dst: torch.Tensor
    atom_mask: torch.Tensor
    edge_mask: torch.Tensor
    molecule_keys: torch.Tensor | None = None  # float32 [B, 167] for `model.maccs_keys`

    @classmethod
    def from_batch(cls, batch: object) -> GraphTensors:
        keys = getattr(batch, "molecule_keys", None)
        return cls(
            **{
                name: torch.from_numpy(getattr(batch, name))
                for name in (
                    "atom_features", "bond_features", "edge_src", "edge_dst",
                    "atom_mask", "edge_mask",
                )
            },
            molecule_keys=None if keys is None else torch.from_numpy(keys),
        )  # fmt: skip

    def as_args(self) -> tuple[torch.Tensor, ...]:
        return (
            self.atom_features, self.bond_features, self.edge_src, self.edge_dst,
            self.atom_mask, self.edge_mask,
        )  # fmt: skip


@dataclass
class PackedGraphs:
    """A batch as one disconnected graph: atoms and edges concatenated, edge indices global."""

    atom_features: torch.Tensor  # [n_atoms_total, F_atom]
    bond_features: torch.Tensor  # [n_edges_total, F_bond]
    edge_src: torch.Tensor  # [n_edges_total]
    edge_dst: torch.Tensor  # [n_edges_total]
    atom_counts: list[int]
    molecule_keys: torch.Tensor | None = None  # float32 [B, 167] for `model.maccs_keys`

    @classmethod
    def from_graphs(cls, graphs: Sequence[MolGraph]) -> PackedGraphs:
        keys = stack_keys(graphs)
        offsets = np.cumsum([0] + [g.n_atoms for g in graphs[:-1]])
        edges = np.concatenate(
            [g.edge_index + o for g, o in zip(graphs, offsets, strict=True)], axis=1
        )
        return cls(
            atom_features=torch.from_numpy(np.concatenate([g.atom_features for g in graphs])),
            bond_features=torch.from_numpy(np.concatenate([g.bond_features for g in graphs])),
            edge_src=torch.from_numpy(edges[0]),
            edge_dst=torch.from_numpy(edges[1]),
            atom_counts=[g.n_atoms for g in graphs],
            molecule_keys=None if keys is None else torch.from_numpy(keys),
        )

    def pad(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed atom states -> padded [B, N, d] and a bool mask, for the attention pooling."""
        return pad_packed(states, self.atom_counts)


def pad_packed(states: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Back-to-back states [sum(counts), d] -> padded [B, max(counts), d] and a bool mask."""
    padded = nn.utils.rnn.pad_sequence(list(states.split(counts)), batch_first=True)
    lengths = torch.tensor(counts, device=states.device)
    mask = torch.arange(padded.shape[1], device=states.device).unsqueeze(0) < lengths.unsqueeze(1)
    return padded, mask


@dataclass
class Encoded:
    """Final embeddings plus the pooled pre-memory features the WGAN critic looks at."""

    embedding: torch.Tensor
    pooled: torch.Tensor

    def float(self) -> Encoded:
        return Encoded(self.embedding.float(), self.pooled.float())


class TextHead(nn.Module):
    """Every token state (not the pooler) through Linear(hidden -> d) + LayerNorm."""

    def __init__(self, hidden: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, dim)
        # No LayerNorm bias: a constant shift of every state is removed by the projector's
        # BatchNorm, so that bias would only collect zero gradients.
        self.norm = nn.LayerNorm(dim, bias=False)

    def forward(self, token_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(token_states))


class SentenceBranch(nn.Module):
    """The text encoder's own sentence embedding beside the token head.

    all-MiniLM-L6-v2 was trained (sentence-transformers) so that the L2-normalised *mean* of
    its token states is the sentence vector; the frozen-MiniLM yardstick uses exactly that.
    The memory-bank attention sees only the per-token head's states, so this branch gives the
    projector that pretrained summary directly: normalised mean -> MLP, added to the pooled
    vector like the molecule tower's fingerprint branch. Inputs are the token states the head
    already gets: no new bundle input.
    """

    def __init__(self, hidden: int, out_dim: int) -> None:
        super().__init__()
        # Unit norm times sqrt(hidden) gives components of about 1, the scale of the head's
        # LayerNorm'd token states that the attention pools.
        self.input_scale = float(np.sqrt(hidden))
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def from_mean(self, mean: torch.Tensor) -> torch.Tensor:
        return self.mlp(nn.functional.normalize(mean, dim=-1) * self.input_scale)

    def forward(self, token_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Padded encoder states [B, L, hidden] with a bool mask [B, L] -> [B, out_dim]."""
        return self.from_mean(masked_mean(token_states, mask))

    def forward_packed(self, token_states: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """Back-to-back encoder states [sum(lengths), hidden] -> [len(lengths), out_dim]."""
        sums = segment_sums(token_states, lengths)
        counts = torch.tensor(lengths, dtype=sums.dtype, device=sums.device).clamp(min=1.0)
        return self.from_mean(sums / counts.unsqueeze(-1))


class DualEncoder(nn.Module):
    def __init__(
        self, config: ModelConfig, text_hidden: int, text_encoder: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.text_encoder = text_encoder
        self.text_head = TextHead(text_hidden, config.embed_dim)
        self.molecule_tower = MoleculeTower(
            config.graph_hidden, config.embed_dim, config.graph_layers, config.dropout
        )
        self.sentence = (
            SentenceBranch(text_hidden, config.embed_dim) if config.sentence_branch else None
        )
        self.fingerprint = (
            FingerprintBranch(config.graph_hidden, config.embed_dim)
            if config.fingerprint_branch
            else None
        )
        self.keys = (
            KeysBranch(N_MOLECULE_KEYS, config.graph_hidden, config.embed_dim)
            if config.maccs_keys
            else None
        )
        self.projector = MemoryBankProjector(
            config.embed_dim,
            num_memories=config.num_memories,
            num_heads=config.num_heads,
            dropout=config.dropout,
            use_memory=config.memory_bank,
            scale_init=config.scale_init,
            sum_pool=config.sum_pool,
        )

    def encode_text_states(self, token_states: torch.Tensor, mask: torch.Tensor) -> Encoded:
        """From encoder token states [B, L, hidden] and a bool mask [B, L]."""
        states = self.text_head(token_states)
        extra = self.text_extra(token_states, mask)
        return Encoded(self.projector(states, mask, "text", extra), masked_mean(states, mask))

    def encode_text_packed(self, token_states: torch.Tensor, lengths: list[int]) -> Encoded:
        """From back-to-back token states [sum(lengths), hidden]: the head skips the padding.

        Equal to `encode_text_states` on the padded batch (the head is per token and the
        projector masks padding); only the cost differs."""
        states, mask = pad_packed(self.text_head(token_states), lengths)
        extra = (
            self.sentence.forward_packed(token_states, lengths)
            if self.sentence is not None
            else None
        )
        return Encoded(self.projector(states, mask, "text", extra), masked_mean(states, mask))

    def text_extra(self, token_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """The sentence branch on padded encoder states (None when the config has none)."""
        if self.sentence is None:
            return None
        return self.sentence(token_states, mask)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        if self.text_encoder is None:
            raise RuntimeError("this model was built without a text encoder (frozen, cached)")
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        return self.encode_text_states(out.last_hidden_state, attention_mask.bool())

    def encode_molecule(self, graphs: GraphTensors | PackedGraphs) -> Encoded:
        if isinstance(graphs, PackedGraphs):
            packed = self.molecule_tower.forward_packed(
                graphs.atom_features, graphs.bond_features, graphs.edge_src, graphs.edge_dst
            )
            states, mask = graphs.pad(packed)
            fingerprint = (
                self.fingerprint.forward_packed(graphs.atom_features, graphs.atom_counts)
                if self.fingerprint is not None
                else None
            )
            extra = self.add_keys(fingerprint, graphs.molecule_keys)
        else:
            states, mask = self.molecule_tower(*graphs.as_args()), graphs.atom_mask
            extra = self.molecule_extra(graphs.atom_features, mask, graphs.molecule_keys)
        return Encoded(self.projector(states, mask, "molecule", extra), masked_mean(states, mask))

    def molecule_extra(
        self,
        atom_features: torch.Tensor,
        atom_mask: torch.Tensor,
        molecule_keys: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The fingerprint and keys branches on padded atoms (None when the config has
        neither)."""
        fingerprint = (
            self.fingerprint(atom_features, atom_mask) if self.fingerprint is not None else None
        )
        return self.add_keys(fingerprint, molecule_keys)

    def add_keys(
        self, extra: torch.Tensor | None, molecule_keys: torch.Tensor | None
    ) -> torch.Tensor | None:
        """``extra`` plus the keys branch of ``molecule_keys`` (``extra`` as is without it)."""
        if self.keys is None:
            return extra
        if molecule_keys is None:
            raise ValueError(
                "this model takes MACCS keys (model.maccs_keys): featurize with keys=True"
            )
        from_keys = self.keys(molecule_keys)
        return from_keys if extra is None else extra + from_keys


def freeze_lower_layers(encoder: nn.Module, trainable_layers: int) -> None:
    """Leave only the top `trainable_layers` transformer blocks (and nothing below) trainable."""
    for param in encoder.parameters():
        param.requires_grad_(False)
    blocks = encoder.encoder.layer  # BERT-family layout
    for block in list(blocks)[len(blocks) - trainable_layers :]:
        for param in block.parameters():
            param.requires_grad_(True)
