"""The graph schema, without RDKit: feature vocabulary sizes, the unpadded and padded graph
layouts, size buckets and padding.

It is apart from :mod:`molret.featurize` (which parses SMILES with RDKit and fills this schema)
so that code that only consumes graphs (the molecule tower, the export, a GPU machine that gets
pre-featurized arrays) imports no RDKit. Anything that changes an encoding must bump
``FEATURE_VOCAB_VERSION`` so stored bundles and caches can refuse a mismatch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FEATURE_VOCAB_VERSION: str = "2"

ATOM_FEATURE_NAMES: tuple[str, ...] = (
    "atomic_num",
    "chirality",
    "degree",
    "formal_charge",
    "num_hs",
    "radical_electrons",
    "hybridization",
    "aromatic",
    "in_ring",
    "environment_r1",
    "environment_r2",
)
BOND_FEATURE_NAMES: tuple[str, ...] = ("bond_type", "stereo", "conjugated", "in_ring")

# Vocabularies (index = position; "other" = len(vocab)). Append-only, and bump the version.
MAX_ATOMIC_NUM = 118  # 0 is the dummy atom "*"
CHIRALITY_NAMES = (
    "CHI_UNSPECIFIED",
    "CHI_TETRAHEDRAL_CW",
    "CHI_TETRAHEDRAL_CCW",
    "CHI_OTHER",
    "CHI_TETRAHEDRAL",
    "CHI_ALLENE",
    "CHI_SQUAREPLANAR",
    "CHI_TRIGONALBIPYRAMIDAL",
    "CHI_OCTAHEDRAL",
)
MAX_DEGREE = 10
MAX_ABS_CHARGE = 5
MAX_NUM_HS = 8
MAX_RADICALS = 4
HYBRIDIZATION_NAMES = ("UNSPECIFIED", "S", "SP", "SP2", "SP3", "SP3D", "SP3D2", "OTHER")
BOND_TYPE_NAMES = ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC", "DATIVE")
BOND_STEREO_NAMES = (
    "STEREONONE",
    "STEREOANY",
    "STEREOZ",
    "STEREOE",
    "STEREOCIS",
    "STEREOTRANS",
)

ENVIRONMENT_RADII: tuple[int, ...] = (1, 2)
# Hash buckets per radius. ChEBI-20 (train + validation) has 5,732 distinct radius-1 and 54,356
# distinct radius-2 environments, long-tailed (the 4,096 most frequent radius-2 ones cover 84% of
# atoms, 23k occur once); measured 2026-11-26.
ENVIRONMENT_BUCKETS: tuple[int, ...] = (4096, 16384)

ATOM_FEATURE_SIZES: tuple[int, ...] = (
    MAX_ATOMIC_NUM + 2,  # 0..118, other
    len(CHIRALITY_NAMES) + 1,
    MAX_DEGREE + 2,  # 0..10, other
    2 * MAX_ABS_CHARGE + 2,  # -5..+5, other
    MAX_NUM_HS + 2,  # 0..8, other
    MAX_RADICALS + 2,  # 0..4, other
    len(HYBRIDIZATION_NAMES) + 1,
    2,  # aromatic
    2,  # in_ring
    *(buckets + 1 for buckets in ENVIRONMENT_BUCKETS),  # Morgan identifier mod buckets, none
)
BOND_FEATURE_SIZES: tuple[int, ...] = (
    len(BOND_TYPE_NAMES) + 1,
    len(BOND_STEREO_NAMES) + 1,
    2,  # conjugated
    2,  # in_ring
)

DEFAULT_BUCKETS: tuple[tuple[int, int], ...] = ((32, 80), (64, 160), (128, 320), (256, 640))


N_ATOM_FEATURES = len(ATOM_FEATURE_SIZES)
N_BOND_FEATURES = len(BOND_FEATURE_SIZES)


@dataclass(frozen=True, eq=False)
class MolGraph:
    """One molecule, unpadded.

    ``eq=False`` keeps identity comparison/hashing: field-wise ``==`` on numpy arrays is
    ambiguous and arrays are unhashable.
    """

    atom_features: np.ndarray  # int64 [n_atoms, len(ATOM_FEATURE_SIZES)]
    bond_features: np.ndarray  # int64 [n_edges, len(BOND_FEATURE_SIZES)]
    edge_index: np.ndarray  # int64 [2, n_edges]; row 0 source, row 1 destination
    # uint8 [N_MOLECULE_KEYS] MACCS keys, only where the model takes them (they cost more
    # than the rest of featurization); None otherwise.
    keys: np.ndarray | None = None

    @property
    def n_atoms(self) -> int:
        return int(self.atom_features.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.edge_index.shape[1])


# The arrays of a GraphBatch, in the order the exported molecule tower takes them as inputs.
GRAPH_ARRAYS: tuple[str, ...] = (
    "atom_features", "bond_features", "edge_src", "edge_dst", "atom_mask", "edge_mask",
)  # fmt: skip
# The optional last input of a molecule tower built with `model.maccs_keys`: float32 [B, 167].
MOLECULE_KEYS = "molecule_keys"
N_MOLECULE_KEYS = 167  # RDKit's MACCS keys (bit 0 is unused, kept so bit i is key i)


def molecule_inputs(with_keys: bool) -> tuple[str, ...]:
    """The ONNX input names of a molecule tower, in order."""
    return (*GRAPH_ARRAYS, MOLECULE_KEYS) if with_keys else GRAPH_ARRAYS


@dataclass(frozen=True, eq=False)
class GraphBatch:
    """B molecules padded to one ``(max_nodes, max_edges)`` shape; masks mark real rows."""

    atom_features: np.ndarray  # int64 [B, max_nodes, F_atom]; padding rows 0
    bond_features: np.ndarray  # int64 [B, max_edges, F_bond]; padding rows 0
    edge_src: np.ndarray  # int64 [B, max_edges]; padding edges point at node 0
    edge_dst: np.ndarray  # int64 [B, max_edges]; padding edges point at node 0
    atom_mask: np.ndarray  # bool [B, max_nodes]
    edge_mask: np.ndarray  # bool [B, max_edges]
    molecule_keys: np.ndarray | None = None  # float32 [B, N_MOLECULE_KEYS] when graphs have keys

    @property
    def batch_size(self) -> int:
        return int(self.atom_features.shape[0])

    @property
    def max_nodes(self) -> int:
        return int(self.atom_features.shape[1])

    @property
    def max_edges(self) -> int:
        return int(self.bond_features.shape[1])


def too_large_reason(graph: MolGraph, max_nodes: int, max_edges: int, what: str) -> str:
    over = []
    if graph.n_atoms > max_nodes:
        over.append(f"{graph.n_atoms} atoms")
    if graph.n_edges > max_edges:
        over.append(f"{graph.n_edges} directed edges")
    limit = f"{what} ({max_nodes} atoms, {max_edges} edges)"
    return f"molecule has {' and '.join(over)}, more than {limit}"


def fits(graph: MolGraph, max_nodes: int, max_edges: int) -> bool:
    return graph.n_atoms <= max_nodes and graph.n_edges <= max_edges


def no_bucket_reason(graph: MolGraph, buckets: Sequence[tuple[int, int]]) -> str:
    largest = max(buckets)
    if largest == (max(b[0] for b in buckets), max(b[1] for b in buckets)):
        return too_large_reason(graph, *largest, "the largest bucket")
    # Buckets that are not nested have no single "largest" one to blame.
    return (
        f"molecule has {graph.n_atoms} atoms and {graph.n_edges} directed edges, "
        f"which fits none of the buckets {list(buckets)}"
    )


def choose_bucket(
    graph: MolGraph, buckets: Sequence[tuple[int, int]] = DEFAULT_BUCKETS
) -> tuple[int, int] | None:
    """Smallest ``(max_nodes, max_edges)`` bucket holding the graph, or ``None``.

    "Smallest" orders by nodes, then edges, so the answer does not depend on list order.
    """
    fitting = [bucket for bucket in buckets if fits(graph, *bucket)]
    return min(fitting) if fitting else None


def group_by_bucket(
    graphs: Sequence[MolGraph], buckets: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], list[int]]:
    """Positions of the graphs per smallest fitting bucket, for one padded run per bucket.

    ``ValueError`` names the first graph that fits none (callers reject those up front).
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for position, graph in enumerate(graphs):
        bucket = choose_bucket(graph, buckets)
        if bucket is None:
            raise ValueError(
                f"graph {position} ({graph.n_atoms} atoms, {graph.n_edges} edges) fits no "
                f"bucket of {list(buckets)}"
            )
        groups.setdefault(bucket, []).append(position)
    return groups


def pad_graphs(graphs: Sequence[MolGraph], max_nodes: int, max_edges: int) -> GraphBatch:
    """Pad graphs into one batch; ``ValueError`` names the first graph that does not fit.

    Scatter all graphs at once (concatenate + fancy index) rather than one slice copy per
    graph, which keeps large serving batches cheap.
    """
    if max_nodes < 1 or max_edges < 0:
        raise ValueError(f"need max_nodes >= 1 and max_edges >= 0, got ({max_nodes}, {max_edges})")
    for index, graph in enumerate(graphs):
        if not fits(graph, max_nodes, max_edges):
            raise ValueError(
                f"graph {index}: "
                + too_large_reason(graph, max_nodes, max_edges, "the batch shape")
            )

    batch = len(graphs)
    atom_features = np.zeros((batch, max_nodes, N_ATOM_FEATURES), dtype=np.int64)
    bond_features = np.zeros((batch, max_edges, N_BOND_FEATURES), dtype=np.int64)
    edge_src = np.zeros((batch, max_edges), dtype=np.int64)
    edge_dst = np.zeros((batch, max_edges), dtype=np.int64)
    atom_mask = np.zeros((batch, max_nodes), dtype=bool)
    edge_mask = np.zeros((batch, max_edges), dtype=bool)
    if batch:
        n_atoms = np.fromiter((g.n_atoms for g in graphs), dtype=np.int64, count=batch)
        n_edges = np.fromiter((g.n_edges for g in graphs), dtype=np.int64, count=batch)
        atom_rows, atom_cols = _scatter_positions(n_atoms)
        edge_rows, edge_cols = _scatter_positions(n_edges)
        atom_features[atom_rows, atom_cols] = np.concatenate([g.atom_features for g in graphs])
        atom_mask[atom_rows, atom_cols] = True
        if edge_rows.size:
            bond_features[edge_rows, edge_cols] = np.concatenate([g.bond_features for g in graphs])
            edge_index = np.concatenate([g.edge_index for g in graphs], axis=1)
            edge_src[edge_rows, edge_cols] = edge_index[0]
            edge_dst[edge_rows, edge_cols] = edge_index[1]
            edge_mask[edge_rows, edge_cols] = True
    return GraphBatch(
        atom_features=atom_features,
        bond_features=bond_features,
        edge_src=edge_src,
        edge_dst=edge_dst,
        atom_mask=atom_mask,
        edge_mask=edge_mask,
        molecule_keys=stack_keys(graphs),
    )


def stack_keys(graphs: Sequence[MolGraph]) -> np.ndarray | None:
    """float32 [B, N_MOLECULE_KEYS] of graphs that all carry keys; None when none does.

    A mix is a caller's bug (featurized with and without keys), so it raises instead of
    silently feeding zeros for the missing ones."""
    with_keys = [g.keys is not None for g in graphs]
    if not graphs or not any(with_keys):
        return None
    if not all(with_keys):
        missing = with_keys.index(False)
        raise ValueError(f"graph {missing} has no molecule keys while others have them")
    return np.stack([g.keys for g in graphs]).astype(np.float32)  # type: ignore[misc]


def _scatter_positions(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(batch row, position in row) for every real item when row ``b`` holds ``counts[b]``."""
    rows = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    cols = np.arange(rows.size, dtype=np.int64) - np.repeat(starts, counts)
    return rows, cols


def smallest_fitting_shape(graphs: Sequence[MolGraph]) -> tuple[int, int]:
    """``(max atoms, max edges)`` over ``graphs``, at least ``(1, 1)`` so no axis is empty."""
    max_nodes = max((g.n_atoms for g in graphs), default=0)
    max_edges = max((g.n_edges for g in graphs), default=0)
    return max(max_nodes, 1), max(max_edges, 1)
