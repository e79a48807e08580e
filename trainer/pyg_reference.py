"""The trained molecule tower run by torch-geometric: the "naive PyTorch eager" baseline.

Benchmarks compare the exported ONNX towers against this: the same weights, message passing by
torch-geometric's ``GINEConv`` over a ``Batch`` (sparse scatter), then the shared projector.
It is also an independent check that the trained weights mean the same thing in both forms.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GINEConv, global_add_pool
from torch_geometric.utils import to_dense_batch

from molret.graphs import MolGraph

from .model import DualEncoder


def _gine(layer: nn.Module) -> GINEConv:
    """A GINEConv sharing the layer's trained MLP and eps.

    GINEConv's constructor re-initialises the module it is given, so it gets a throw-away
    copy and the trained MLP is attached afterwards; passing ``layer.mlp`` directly would
    overwrite the model's weights with random ones.
    """
    conv = GINEConv(nn=copy.deepcopy(layer.mlp), train_eps=True)
    conv.nn = layer.mlp
    with torch.no_grad():
        conv.eps.copy_(layer.eps)
    return conv


class PygMoleculeEncoder(nn.Module):
    """SMILES graphs -> final molecule embeddings with torch-geometric doing the messages."""

    def __init__(self, model: DualEncoder) -> None:
        super().__init__()
        self.tower = model.molecule_tower
        self.projector = model.projector
        self.fingerprint = model.fingerprint
        self.add_keys = model.add_keys
        self.convs = nn.ModuleList(_gine(layer) for layer in self.tower.layers)

    @staticmethod
    def batch(graphs: Sequence[MolGraph]) -> Batch:
        return Batch.from_data_list(
            [
                Data(
                    x=torch.from_numpy(g.atom_features),
                    edge_index=torch.from_numpy(g.edge_index),
                    edge_attr=torch.from_numpy(g.bond_features),
                    # [1, n_keys] per graph, so the batch stacks them to [B, n_keys]
                    **({} if g.keys is None else {"maccs": torch.from_numpy(g.keys[None]).float()}),
                )
                for g in graphs
            ]
        )

    @torch.no_grad()
    def forward(self, batch: Batch) -> torch.Tensor:
        tower = self.tower
        h = tower.atom_embedding(batch.x)
        for bond_embedding, conv, norm in zip(
            tower.bond_embeddings, self.convs, tower.norms, strict=True
        ):
            update = conv(h, batch.edge_index, bond_embedding(batch.edge_attr))
            h = norm(h + torch.relu(update))
        states, mask = to_dense_batch(tower.out(h), batch.batch)
        extra = None
        if self.fingerprint is not None:  # per-molecule sum by torch-geometric's scatter
            sums = global_add_pool(self.fingerprint.embedding(batch.x), batch.batch)
            extra = self.fingerprint.from_atom_sums(sums)
        extra = self.add_keys(extra, getattr(batch, "maccs", None))  # "keys" is a Data method
        return self.projector(states, mask, "molecule", extra)
