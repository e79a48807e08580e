"""Both towers to ONNX, each ending in the final L2-normalised embedding.

The text graph is pretrained encoder -> token head -> memory-bank projector, with dynamic batch
and sequence axes (sequence up to the bundle's max length). The molecule graph is the dense
padded GINE tower -> projector, exported once per size bucket with static node and edge axes
and a dynamic batch axis: message passing is a gather plus a one-hot incidence matmul, so the
graph has no scatter and no data-dependent shape and ONNX Runtime and TensorRT run it as-is.

The TorchScript-based exporter (``dynamo=False``) is used on purpose: it needs no extra
packages, and it writes ``nn.MultiheadAttention`` with its padding mask as plain MatMul/Softmax
ops that every runtime supports.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from molret.graphs import (
    ATOM_FEATURE_SIZES,
    BOND_FEATURE_SIZES,
    N_MOLECULE_KEYS,
    molecule_inputs,
)
from molret.trainer.model import DualEncoder

OPSET = 17
TEXT_INPUTS = ("input_ids", "attention_mask")
OUTPUT = "embedding"


class TextTower(nn.Module):
    """Token ids + mask -> embedding: the encoder, the token head and the shared projector."""

    def __init__(self, encoder: nn.Module, model: DualEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.bool()
        model = self.model
        extra = model.text_extra(states, mask)
        return model.projector(model.text_head(states), mask, "text", extra)


class MoleculeTower(nn.Module):
    """Padded graph arrays -> embedding (dense form, the one without scatter)."""

    def __init__(self, model: DualEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        atom_features: torch.Tensor,
        bond_features: torch.Tensor,
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
        atom_mask: torch.Tensor,
        edge_mask: torch.Tensor,
        molecule_keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        model = self.model
        states = model.molecule_tower(
            atom_features, bond_features, edge_src, edge_dst, atom_mask, edge_mask
        )
        extra = model.molecule_extra(atom_features, atom_mask, molecule_keys)
        return model.projector(states, atom_mask, "molecule", extra)


def example_graph_inputs(
    max_nodes: int, max_edges: int, batch: int = 2
) -> tuple[torch.Tensor, ...]:
    """A valid dummy batch for tracing: a chain over the first few atoms of each graph."""
    atoms = torch.zeros(batch, max_nodes, len(ATOM_FEATURE_SIZES), dtype=torch.long)
    atoms[..., 0] = 6
    bonds = torch.zeros(batch, max_edges, len(BOND_FEATURE_SIZES), dtype=torch.long)
    src = torch.zeros(batch, max_edges, dtype=torch.long)
    dst = torch.zeros(batch, max_edges, dtype=torch.long)
    src[:, 0], dst[:, 0], src[:, 1], dst[:, 1] = 0, 1, 1, 0
    atom_mask = torch.zeros(batch, max_nodes, dtype=torch.bool)
    atom_mask[:, :2] = True
    edge_mask = torch.zeros(batch, max_edges, dtype=torch.bool)
    edge_mask[:, :2] = True
    return atoms, bonds, src, dst, atom_mask, edge_mask


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: tuple[str, ...],
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about Python-side shape checks inside transformers and
        # nn.MultiheadAttention; they are constant for a traced graph and harmless here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(input_names),
            output_names=[OUTPUT],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _declare_output_width(path: Path, width: int) -> None:
    """Write the embedding width into the graph's output type.

    The TorchScript exporter names it symbolically (``Divembedding_dim_1``) once a second
    branch feeds the projector, although it is a constant of the model. TensorRT and the
    bundle checks read the declared shape, so it is set here; the parity check that follows
    every export runs the graph and would fail on a wrong width.
    """
    import onnx

    model = onnx.load(str(path))
    (output,) = model.graph.output
    dim = output.type.tensor_type.shape.dim[1]
    if dim.dim_value not in (0, width):
        raise ValueError(f"{path.name}: output width {dim.dim_value}, expected {width}")
    dim.ClearField("dim_param")
    dim.dim_value = width
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_text_tower(encoder: nn.Module, model: DualEncoder, path: Path) -> None:
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 2023, 102, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    axes = {name: {0: "batch", 1: "sequence"} for name in TEXT_INPUTS}
    axes[OUTPUT] = {0: "batch"}
    _export(TextTower(encoder, model), (ids, mask), path, TEXT_INPUTS, axes)
    _declare_output_width(path, model.config.embed_dim)


def export_molecule_tower(model: DualEncoder, bucket: tuple[int, int], path: Path) -> None:
    """One bucket: node and edge axes fixed at (max_nodes, max_edges), batch dynamic."""
    with_keys = model.config.maccs_keys
    names = molecule_inputs(with_keys)
    args = example_graph_inputs(*bucket)
    if with_keys:
        keys = torch.zeros(args[0].shape[0], N_MOLECULE_KEYS)
        keys[:, 1::7] = 1.0
        args = (*args, keys)
    axes = {name: {0: "batch"} for name in (*names, OUTPUT)}
    _export(MoleculeTower(model), args, path, names, axes)
    _declare_output_width(path, model.config.embed_dim)
