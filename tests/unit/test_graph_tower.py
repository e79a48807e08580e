"""Tests for molret.trainer.graph_tower: the dense padded GINE against torch_geometric's sparse
GINEConv on the unpadded graphs, padding and batch invariance, and the no-scatter property."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from molret.featurize import (
    ATOM_FEATURE_SIZES,
    BOND_FEATURE_SIZES,
    MolGraph,
    featurize,
    pad_graphs,
    smallest_fitting_shape,
)
from molret.trainer.graph_tower import (
    CategoricalEmbedding,
    DenseGINELayer,
    MoleculeTower,
    incidence,
)
from molret.trainer.model import GraphTensors

torch_geometric = pytest.importorskip("torch_geometric")
from torch_geometric.nn import GINEConv  # noqa: E402

torch.set_num_threads(1)

FORTY_ATOMS = "C" * 31 + "c1ccccc1C(=O)O"  # 31 + 6 + 3 heavy atoms
SMILES = [
    "CCO",
    "c1ccccc1O",
    "[Na+].[Cl-]",  # two atoms, no bonds
    "CC(=O)Oc1ccccc1C(=O)O",
    FORTY_ATOMS,
    "C[C@H](N)C(=O)O",
    "C",  # one atom
]
HIDDEN = 16


@pytest.fixture(scope="module")
def graphs() -> list[MolGraph]:
    out = [featurize(s) for s in SMILES]
    assert out[4].n_atoms == 40
    assert out[2].n_edges == 0
    return out


def as_tensors(graphs: list[MolGraph], max_nodes: int | None = None, max_edges: int | None = None):
    nodes, edges = smallest_fitting_shape(graphs)
    return GraphTensors.from_batch(pad_graphs(graphs, max_nodes or nodes, max_edges or edges))


def pyg_edge_index(graphs: list[MolGraph]) -> torch.Tensor:
    """Concatenated edge_index with node offsets, like a torch_geometric Batch."""
    parts, offset = [], 0
    for g in graphs:
        parts.append(torch.from_numpy(g.edge_index) + offset)
        offset += g.n_atoms
    return torch.cat(parts, dim=1)


def gine_like(layer: DenseGINELayer) -> GINEConv:
    """A GINEConv with the layer's MLP weights and eps (GINEConv's constructor re-initialises the
    MLP it is given, so it gets a copy and the weights are loaded afterwards)."""
    conv = GINEConv(nn=copy.deepcopy(layer.mlp), train_eps=True)
    with torch.no_grad():
        conv.nn.load_state_dict(layer.mlp.state_dict())
        conv.eps.copy_(layer.eps)
    return conv.eval()


def manual_embedding(table: torch.Tensor, sizes: tuple[int, ...], rows: np.ndarray) -> torch.Tensor:
    """Sum over columns of table[offset_c + value], offsets written out by hand."""
    offsets = [sum(sizes[:c]) for c in range(len(sizes))]
    out = torch.zeros(rows.shape[0], table.shape[1])
    for i, row in enumerate(rows):
        for c, value in enumerate(row):
            assert 0 <= value < sizes[c]
            out[i] += table[offsets[c] + int(value)]
    return out


# --------------------------------------------------------------------------------------------
# Building blocks


def test_categorical_embedding_uses_one_slot_per_column_value(graphs) -> None:
    torch.manual_seed(0)
    emb = CategoricalEmbedding(ATOM_FEATURE_SIZES, 8)
    assert emb.table.num_embeddings == sum(ATOM_FEATURE_SIZES)
    rows = np.concatenate([g.atom_features for g in graphs])
    with torch.no_grad():
        got = emb(torch.from_numpy(rows))
        want = manual_embedding(emb.table.weight, ATOM_FEATURE_SIZES, rows)
    # Sums of 11 terms in a different order: equal up to float32 rounding (relative 1e-6).
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    # The last index of the last column is the last row of the table (no overflow).
    top = torch.tensor([[s - 1 for s in ATOM_FEATURE_SIZES]])
    with torch.no_grad():
        assert emb(top).shape == (1, 8)


def test_incidence_hand_case() -> None:
    edge_dst = torch.tensor([[1, 0, 2, 0]])
    edge_mask = torch.tensor([[True, True, True, False]])
    want = torch.tensor([[[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]]], dtype=torch.float32)
    torch.testing.assert_close(incidence(edge_dst, edge_mask, 3), want)


# --------------------------------------------------------------------------------------------
# DenseGINELayer == GINEConv


@pytest.mark.parametrize("extra_pad", [(0, 0), (5, 17)])
@pytest.mark.parametrize("eps", [0.0, 0.37, -0.2])
def test_dense_gine_layer_equals_pyg_gineconv(graphs, eps: float, extra_pad) -> None:
    torch.manual_seed(1)
    layer = DenseGINELayer(HIDDEN).eval()
    with torch.no_grad():
        layer.eps.fill_(eps)
    conv = gine_like(layer)

    nodes, edges = smallest_fitting_shape(graphs)
    batch = as_tensors(graphs, nodes + extra_pad[0], edges + extra_pad[1])
    n_max, e_max = batch.atom_features.shape[1], batch.bond_features.shape[1]
    # Garbage everywhere, so padding rows hold nonsense the layer must ignore.
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(len(graphs), n_max, HIDDEN, generator=gen) * 3
    e = torch.randn(len(graphs), e_max, HIDDEN, generator=gen) * 3
    h[~batch.atom_mask] = 1e3
    # Padding edges read atom 0; with -1e3 their message relu(h_0 + e) is 0 anyway, so the
    # same check runs again with +1e3, where only the mask can keep them out.
    e[~batch.edge_mask] = -1e3
    e_pos = e.clone()
    e_pos[~batch.edge_mask] = 1e3

    x = h[batch.atom_mask]  # [total atoms, H], graph-major order
    edge_attr = e[batch.edge_mask]
    edge_index = pyg_edge_index(graphs)
    with torch.no_grad():
        want = conv(x, edge_index, edge_attr)
        inc = incidence(batch.edge_dst, batch.edge_mask, n_max)
        got = layer(h, e, batch.edge_src, inc)[batch.atom_mask]
        got_pos = layer(h, e_pos, batch.edge_src, inc)[batch.atom_mask]
    assert edge_index.shape[1] == int(batch.edge_mask.sum()) == sum(g.n_edges for g in graphs)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_pos, want, atol=1e-5, rtol=1e-5)


def test_dense_gine_layer_hand_case() -> None:
    """A path 0 - 1 - 2 with identity-like MLP checked with numbers written by hand."""
    layer = DenseGINELayer(1)
    with torch.no_grad():
        layer.eps.fill_(0.5)
        layer.mlp[0].weight.copy_(torch.tensor([[1.0], [0.0]]))
        layer.mlp[0].bias.zero_()
        layer.mlp[3].weight.copy_(torch.tensor([[1.0, 0.0]]))
        layer.mlp[3].bias.zero_()
    h = torch.tensor([[[1.0], [2.0], [-4.0]]])
    # edges 0->1, 1->0, 1->2, 2->1 with edge values 0, 0, -1, 1
    src = torch.tensor([[0, 1, 1, 2]])
    dst = torch.tensor([[1, 0, 2, 1]])
    e = torch.tensor([[[0.0], [0.0], [-1.0], [1.0]]])
    inc = incidence(dst, torch.ones(1, 4, dtype=torch.bool), 3)
    # node 0: 1.5 * 1 + relu(2 + 0) = 3.5
    # node 1: 1.5 * 2 + relu(1 + 0) + relu(-4 + 1) = 4
    # node 2: 1.5 * -4 + relu(2 - 1) = -5 -> relu in the MLP -> 0
    want = torch.tensor([[[3.5], [4.0], [0.0]]])
    with torch.no_grad():
        torch.testing.assert_close(layer(h, e, src, inc), want)


# --------------------------------------------------------------------------------------------
# MoleculeTower


def make_tower(seed: int = 0) -> MoleculeTower:
    torch.manual_seed(seed)
    tower = MoleculeTower(HIDDEN, out_dim=12, num_layers=3, dropout=0.1)
    # Non-default LayerNorm affine parameters, so a mistake there shows.
    with torch.no_grad():
        for module in tower.modules():
            if isinstance(module, torch.nn.LayerNorm):
                if module.weight is not None:
                    module.weight.uniform_(0.5, 1.5)
                if module.bias is not None:
                    module.bias.uniform_(-0.5, 0.5)
        for layer in tower.layers:
            layer.eps.uniform_(-0.3, 0.3)
    return tower.eval()


def reference_tower(tower: MoleculeTower, graph: MolGraph) -> torch.Tensor:
    """The tower on one unpadded graph, with torch_geometric's GINEConv doing the messages."""
    table = tower.atom_embedding.table.weight
    h = manual_embedding(table, ATOM_FEATURE_SIZES, graph.atom_features)
    edge_index = torch.from_numpy(graph.edge_index)
    for bond_embedding, layer, norm in zip(
        tower.bond_embeddings, tower.layers, tower.norms, strict=True
    ):
        e = manual_embedding(bond_embedding.table.weight, BOND_FEATURE_SIZES, graph.bond_features)
        conv = gine_like(layer)
        update = conv(h, edge_index, e)
        h = norm(h + torch.relu(update))
    return tower.out(h)


def test_tower_equals_sparse_reference(graphs) -> None:
    tower = make_tower()
    batch = as_tensors(graphs)
    with torch.no_grad():
        out = tower(*batch.as_args())
        for i, g in enumerate(graphs):
            want = reference_tower(tower, g)
            torch.testing.assert_close(out[i, : g.n_atoms], want, atol=1e-5, rtol=1e-5)
            assert (out[i, g.n_atoms :] == 0).all()


def test_tower_padding_invariance(graphs) -> None:
    tower = make_tower(1)
    with torch.no_grad():
        for g in graphs:
            tight = tower(*as_tensors([g], g.n_atoms, max(g.n_edges, 1)).as_args())
            loose = tower(*as_tensors([g], 64, 160).as_args())
            torch.testing.assert_close(
                loose[0, : g.n_atoms], tight[0, : g.n_atoms], atol=1e-5, rtol=0
            )
            assert (loose[0, g.n_atoms :] == 0).all()


def test_tower_states_do_not_depend_on_the_rest_of_the_batch(graphs) -> None:
    tower = make_tower(2)
    with torch.no_grad():
        alone = [tower(*as_tensors([g]).as_args())[0, : g.n_atoms] for g in graphs]
        for order in (list(range(len(graphs))), list(reversed(range(len(graphs))))):
            batch = [graphs[i] for i in order]
            out = tower(*as_tensors(batch, 64, 160).as_args())
            for row, i in enumerate(order):
                n = graphs[i].n_atoms
                torch.testing.assert_close(out[row, :n], alone[i], atol=1e-5, rtol=0)
        # Pairs too: every molecule next to every other one.
        for i, j in itertools.combinations(range(len(graphs)), 2):
            out = tower(*as_tensors([graphs[i], graphs[j]]).as_args())
            torch.testing.assert_close(out[0, : graphs[i].n_atoms], alone[i], atol=1e-5, rtol=0)
            torch.testing.assert_close(out[1, : graphs[j].n_atoms], alone[j], atol=1e-5, rtol=0)


def test_tower_gradients_ignore_padding_values(graphs) -> None:
    """Training view: the loss gradient w.r.t. weights does not change with padding size."""
    grads = []
    for shape in [None, (64, 160)]:
        tower = make_tower(3)
        batch = as_tensors(graphs[:4], *(shape or (None, None)))
        out = tower(*batch.as_args())
        weights = torch.linspace(-1, 1, 12)
        (out * weights).sum().backward()
        grads.append(
            torch.cat([p.grad.reshape(-1) for p in tower.parameters() if p.grad is not None])
        )
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)


class _RecordOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


def test_tower_forward_uses_no_scatter(graphs) -> None:
    """The exported graph must not scatter (duplicate-index scatter-add is the ONNX problem)."""
    tower = make_tower(4)
    batch = as_tensors(graphs)
    recorder = _RecordOps()
    with torch.no_grad(), recorder:
        tower(*batch.as_args())
    forbidden = {op for op in recorder.ops if "scatter" in op or "index_add" in op}
    forbidden |= {op for op in recorder.ops if op.startswith("index_put")}
    assert not forbidden, sorted(recorder.ops)
    # Positive control: the recorder did see the gather and the incidence matmul.
    assert "gather" in recorder.ops
    assert "bmm" in recorder.ops


@pytest.mark.parametrize(
    ("fingerprint_branch", "maccs_keys"), [(False, False), (True, False), (True, True)]
)
def test_packed_path_equals_dense_path(fingerprint_branch: bool, maccs_keys: bool) -> None:
    """Training runs the packed (index_add) twin; export runs the dense one: same numbers."""
    from molret.featurize import featurize_many, pad_graphs
    from molret.trainer.config import ModelConfig
    from molret.trainer.model import DualEncoder, GraphTensors, PackedGraphs

    smiles = ["CCO", "[Na+].[Cl-]", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "[Te]", "C" * 30]
    graphs, errors = featurize_many(smiles, keys=maccs_keys)
    assert not errors
    torch.manual_seed(0)
    model = DualEncoder(
        ModelConfig(
            embed_dim=16,
            graph_hidden=16,
            graph_layers=3,
            num_memories=4,
            fingerprint_branch=fingerprint_branch,
            maccs_keys=maccs_keys,
        ),
        8,
    )
    model.eval()
    dense = GraphTensors.from_batch(pad_graphs(graphs, 40, 90))
    packed = PackedGraphs.from_graphs(graphs)
    with torch.no_grad():
        states_dense = model.molecule_tower(*dense.as_args())
        states_packed = model.molecule_tower.forward_packed(
            packed.atom_features, packed.bond_features, packed.edge_src, packed.edge_dst
        )
        for i, part in enumerate(states_packed.split(packed.atom_counts)):
            torch.testing.assert_close(
                part, states_dense[i, : graphs[i].n_atoms], atol=1e-5, rtol=1e-5
            )
        torch.testing.assert_close(
            model.encode_molecule(packed).embedding,
            model.encode_molecule(dense).embedding,
            atol=1e-5,
            rtol=1e-5,
        )


def test_fingerprint_branch_counts_and_ignores_padding() -> None:
    """The branch sums: C18 minus C16 is exactly two interior CH2 atoms (a mean would give
    something else), garbage in padded atom rows changes nothing, packed equals padded."""
    from molret.featurize import featurize_many, pad_graphs
    from molret.trainer.graph_tower import FingerprintBranch

    torch.manual_seed(0)
    branch = FingerprintBranch(16, 8).eval()
    graphs, errors = featurize_many(["C" * 18, "C" * 16])
    assert not errors
    batch = pad_graphs(graphs, 32, 80)
    features = torch.from_numpy(batch.atom_features)
    mask = torch.from_numpy(batch.atom_mask)
    with torch.no_grad():
        out = branch(features, mask)
        garbage = features.clone()
        garbage[~mask] = 3  # a valid index in every column
        torch.testing.assert_close(branch(garbage, mask), out, atol=0, rtol=0)
        packed = branch.forward_packed(
            torch.cat([torch.from_numpy(g.atom_features) for g in graphs]),
            [g.n_atoms for g in graphs],
        )
    torch.testing.assert_close(packed, out, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        counts = branch.counts(features, mask)
        interior = branch.embedding(features[0, 8:9])  # an atom in the middle of the C18 chain
    assert torch.equal(features[0, 8], features[1, 8])  # same environment in the C16 chain
    torch.testing.assert_close(counts[0] - counts[1], 2 * interior[0] / 32.0, atol=1e-5, rtol=1e-4)
