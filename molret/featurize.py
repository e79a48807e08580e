"""SMILES -> fixed-shape padded graph arrays, shared by the trainer, the ONNX export check and
the serving engine.

There is exactly one featurizer so that a model never sees features at serving time that differ
from the ones it was trained on; anything that changes an encoding below must bump
``FEATURE_VOCAB_VERSION`` so stored bundles and caches can refuse a mismatch.

Design choices:

* Features are small-int categorical indices (one column per property), not one-hot floats.
  The model embeds each column with its own ``nn.Embedding`` and sums them, which is cheaper to
  store (int64 rows instead of ~180 floats per atom), trivially exported to ONNX (a gather), and
  keeps the vocabulary explicit. Every multi-valued column reserves a last index for
  "other/unknown", so an unexpected RDKit value degrades gracefully instead of crashing or
  colliding with a real category. The two boolean columns (aromatic, in_ring) are just 0/1.
* Vocabularies are lists of RDKit enum *names*, not RDKit's integer values, so indices do not
  move when RDKit adds or renumbers enum members (a name the installed RDKit lacks simply
  never occurs, and its index stays reserved).
* Edges are directed: every bond yields ``a -> b`` and ``b -> a`` (at positions ``2i`` and
  ``2i + 1`` for bond ``i``). Message passing then is one scatter-add over ``edge_dst`` with
  no special-casing, the same layout torch_geometric uses, and an ONNX graph needs no
  symmetrisation op.
* Padding to a few fixed ``(max_nodes, max_edges)`` buckets gives ONNX Runtime / TensorRT a
  handful of static shapes to optimise, instead of one shape per request, while wasting little
  compute on padding for typical small molecules. The trainer instead pads each batch to its
  own maximum (``smallest_fitting_shape``). Padding rows are all zero and padding edges point
  at node 0; the masks, not the values, say what is real.
* Besides the per-atom properties, every atom carries the hashed Morgan (ECFP) identifier of
  its radius-1 and radius-2 environment, one categorical column each (``ENVIRONMENT_BUCKETS``
  hash values plus "none" for an isolated atom). These are the substructure "words" the paper's
  Mol2vec input is made of; as embeddings they give the GNN fingerprint-level information from
  its first layer, which a 2-core, 30-minute training budget cannot learn from atoms alone.
  They stay ordinary categorical columns, so the exported graph is still a plain gather.
* Multi-fragment SMILES (salts, hydrates) stay one disconnected graph, because a ChEBI
  description describes the whole record, counter-ions included.
* Molecules are parsed exactly as ``Chem.MolFromSmiles`` does by default (sanitisation and
  stereo perception included), so the graph agrees with what any other RDKit user sees. Only
  when that fails is the SMILES parsed again, step by step, to recover RDKit's own message for
  the error reason; the fast path pays nothing for diagnostics.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import rdchem, rdFingerprintGenerator

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
_MAX_ATOMIC_NUM = 118  # 0 is the dummy atom "*"
_CHIRALITY_NAMES = (
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
_MAX_DEGREE = 10
_MAX_ABS_CHARGE = 5
_MAX_NUM_HS = 8
_MAX_RADICALS = 4
_HYBRIDIZATION_NAMES = ("UNSPECIFIED", "S", "SP", "SP2", "SP3", "SP3D", "SP3D2", "OTHER")
_BOND_TYPE_NAMES = ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC", "DATIVE")
_BOND_STEREO_NAMES = (
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
    _MAX_ATOMIC_NUM + 2,  # 0..118, other
    len(_CHIRALITY_NAMES) + 1,
    _MAX_DEGREE + 2,  # 0..10, other
    2 * _MAX_ABS_CHARGE + 2,  # -5..+5, other
    _MAX_NUM_HS + 2,  # 0..8, other
    _MAX_RADICALS + 2,  # 0..4, other
    len(_HYBRIDIZATION_NAMES) + 1,
    2,  # aromatic
    2,  # in_ring
    *(buckets + 1 for buckets in ENVIRONMENT_BUCKETS),  # Morgan identifier mod buckets, none
)
BOND_FEATURE_SIZES: tuple[int, ...] = (
    len(_BOND_TYPE_NAMES) + 1,
    len(_BOND_STEREO_NAMES) + 1,
    2,  # conjugated
    2,  # in_ring
)

DEFAULT_BUCKETS: tuple[tuple[int, int], ...] = ((32, 80), (64, 160), (128, 320), (256, 640))


def _enum_lookup(enum_type: type, names: Sequence[str]) -> dict[object, int]:
    """Map the installed RDKit's enum members to our stable indices, skipping absent names."""
    table: dict[object, int] = {}
    for index, name in enumerate(names):
        member = getattr(enum_type, name, None)
        if member is not None:
            table[member] = index
    return table


# Integer-valued properties use dicts too: one ``dict.get`` per value is the cheapest clip.
_ATOMIC_NUM = {z: z for z in range(_MAX_ATOMIC_NUM + 1)}
_CHIRALITY = _enum_lookup(rdchem.ChiralType, _CHIRALITY_NAMES)
_DEGREE = {d: d for d in range(_MAX_DEGREE + 1)}
_CHARGE = {c: c + _MAX_ABS_CHARGE for c in range(-_MAX_ABS_CHARGE, _MAX_ABS_CHARGE + 1)}
_NUM_HS = {h: h for h in range(_MAX_NUM_HS + 1)}
_RADICALS = {r: r for r in range(_MAX_RADICALS + 1)}
_HYBRIDIZATION = _enum_lookup(rdchem.HybridizationType, _HYBRIDIZATION_NAMES)
_BOND_TYPE = _enum_lookup(rdchem.BondType, _BOND_TYPE_NAMES)
_BOND_STEREO = _enum_lookup(rdchem.BondStereo, _BOND_STEREO_NAMES)

# The last index of every multi-valued column is "other/unknown".
_OTHER_ATOMIC_NUM = ATOM_FEATURE_SIZES[0] - 1
_OTHER_CHIRALITY = ATOM_FEATURE_SIZES[1] - 1
_OTHER_DEGREE = ATOM_FEATURE_SIZES[2] - 1
_OTHER_CHARGE = ATOM_FEATURE_SIZES[3] - 1
_OTHER_NUM_HS = ATOM_FEATURE_SIZES[4] - 1
_OTHER_RADICALS = ATOM_FEATURE_SIZES[5] - 1
_OTHER_HYBRIDIZATION = ATOM_FEATURE_SIZES[6] - 1
_OTHER_BOND_TYPE = BOND_FEATURE_SIZES[0] - 1
_OTHER_BOND_STEREO = BOND_FEATURE_SIZES[1] - 1

_N_ATOM_FEATURES = len(ATOM_FEATURE_SIZES)
_N_PROPERTY_FEATURES = _N_ATOM_FEATURES - len(ENVIRONMENT_RADII)
# Redundant environments are kept so that every non-isolated atom has one identifier per radius
# (RDKit would otherwise drop an environment equal to a smaller one, shifting the columns).
_MORGAN = rdFingerprintGenerator.GetMorganGenerator(
    radius=max(ENVIRONMENT_RADII), includeRedundantEnvironments=True
)
_N_BOND_FEATURES = len(BOND_FEATURE_SIZES)


@dataclass(frozen=True, eq=False)
class MolGraph:
    """One molecule, unpadded.

    ``eq=False`` keeps identity comparison/hashing: field-wise ``==`` on numpy arrays is
    ambiguous and arrays are unhashable.
    """

    atom_features: np.ndarray  # int64 [n_atoms, len(ATOM_FEATURE_SIZES)]
    bond_features: np.ndarray  # int64 [n_edges, len(BOND_FEATURE_SIZES)]
    edge_index: np.ndarray  # int64 [2, n_edges]; row 0 source, row 1 destination

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


@dataclass(frozen=True, eq=False)
class GraphBatch:
    """B molecules padded to one ``(max_nodes, max_edges)`` shape; masks mark real rows."""

    atom_features: np.ndarray  # int64 [B, max_nodes, F_atom]; padding rows 0
    bond_features: np.ndarray  # int64 [B, max_edges, F_bond]; padding rows 0
    edge_src: np.ndarray  # int64 [B, max_edges]; padding edges point at node 0
    edge_dst: np.ndarray  # int64 [B, max_edges]; padding edges point at node 0
    atom_mask: np.ndarray  # bool [B, max_nodes]
    edge_mask: np.ndarray  # bool [B, max_edges]

    @property
    def batch_size(self) -> int:
        return int(self.atom_features.shape[0])

    @property
    def max_nodes(self) -> int:
        return int(self.atom_features.shape[1])

    @property
    def max_edges(self) -> int:
        return int(self.bond_features.shape[1])


@dataclass(frozen=True)
class FeaturizeError:
    """Why one input item produced no graph; ``index`` is its position in the input."""

    index: int
    smiles: str
    reason: str


class FeaturizeFailure(ValueError):
    """Raised by :func:`featurize` for one bad SMILES; ``reason`` is the human-readable cause."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Parsing and diagnostics


_TIMESTAMP = re.compile(r"^\[\d\d:\d\d:\d\d\]\s?")
_PARSE_PREFIX = "SMILES Parse Error: "


def _clean_parse_messages(raw: str) -> str:
    """Condense RDKit's multi-line parse log to its informative lines.

    RDKit logs a cause, a position hint, an echo of the input with a ``^`` marker and a generic
    "Failed parsing" line; the echo and the marker are useless in a one-line reason.
    """
    lines = [_TIMESTAMP.sub("", line).strip() for line in raw.splitlines()]
    kept = [
        line[len(_PARSE_PREFIX) :].rstrip(":") for line in lines if line.startswith(_PARSE_PREFIX)
    ]
    specific = [line for line in kept if not line.startswith("Failed parsing SMILES")]
    return "; ".join(specific or kept or [line for line in lines if line])


def _captured(call: Callable[[], object]) -> tuple[object, str]:
    """Run an RDKit call and return its result with whatever it logged as errors."""
    capture_cls = getattr(rdBase, "CaptureErrorLog", None)  # newer RDKit only; else no details
    if capture_cls is None:
        return call(), ""
    with capture_cls() as capture:
        result = call()
    return result, capture.messages


def _diagnose(smiles: str) -> str:
    """Explain why ``Chem.MolFromSmiles`` rejected ``smiles`` (slow path, failures only)."""
    mol, log = _captured(lambda: Chem.MolFromSmiles(smiles, sanitize=False))
    if mol is None:
        return f"unparsable SMILES: {_clean_parse_messages(log) or 'RDKit gave no details'}"
    try:
        Chem.SanitizeMol(mol)
    except Exception as exc:  # RDKit raises several unrelated exception types here
        return f"RDKit sanitization failed: {exc}"
    _, log = _captured(lambda: Chem.MolFromSmiles(smiles))
    details = _clean_parse_messages(log) or "no details"
    return f"RDKit rejected the SMILES after sanitization: {details}"


def _parse(smiles: str) -> Chem.Mol:
    """Parse like RDKit's default, with precise reasons for everything we refuse."""
    if not isinstance(smiles, str):
        raise FeaturizeFailure(f"SMILES must be a str, got {type(smiles).__name__}")
    text = smiles.strip()
    if not text:
        raise FeaturizeFailure("empty SMILES")
    # RDKit reads only up to the first whitespace (the rest is a name or CXSMILES extension),
    # so "CCO CCC" would silently become ethanol; refuse instead of featurizing half a record.
    match = re.search(r"\s", text)
    if match is not None:
        raise FeaturizeFailure(
            f"SMILES contains whitespace at position {match.start()}; RDKit would ignore "
            "everything after it (names and CXSMILES extensions are not supported)"
        )
    mol = Chem.MolFromSmiles(text)
    if mol is None:
        raise FeaturizeFailure(_diagnose(text))
    if mol.GetNumAtoms() == 0:
        raise FeaturizeFailure("molecule has no atoms")
    return mol


def _graph_from_mol(mol: Chem.Mol) -> MolGraph:
    """Encode atoms and bonds as int rows, then one ``np.array`` call per table.

    This loop is the featurizer's whole cost above RDKit's parse, so it is written for CPython:
    lookups bound to locals, atoms fetched by index (cheaper than iterating ``GetAtoms()``),
    booleans passed straight to numpy, and edge directions built with numpy, not per bond.
    """
    atomic_num, chirality, degree = _ATOMIC_NUM.get, _CHIRALITY.get, _DEGREE.get
    charge, num_hs, radicals = _CHARGE.get, _NUM_HS.get, _RADICALS.get
    hybridization = _HYBRIDIZATION.get
    atom_rows = [
        (
            atomic_num(atom.GetAtomicNum(), _OTHER_ATOMIC_NUM),
            chirality(atom.GetChiralTag(), _OTHER_CHIRALITY),
            degree(atom.GetDegree(), _OTHER_DEGREE),
            charge(atom.GetFormalCharge(), _OTHER_CHARGE),
            num_hs(atom.GetTotalNumHs(), _OTHER_NUM_HS),
            radicals(atom.GetNumRadicalElectrons(), _OTHER_RADICALS),
            hybridization(atom.GetHybridization(), _OTHER_HYBRIDIZATION),
            atom.GetIsAromatic(),
            atom.IsInRing(),
        )
        for atom in map(mol.GetAtomWithIdx, range(mol.GetNumAtoms()))
    ]
    properties = np.array(atom_rows, dtype=np.int64).reshape(-1, _N_PROPERTY_FEATURES)
    atom_features = np.concatenate((properties, _environment_ids(mol)), axis=1)

    bonds = list(map(mol.GetBondWithIdx, range(mol.GetNumBonds())))
    bond_type, stereo = _BOND_TYPE.get, _BOND_STEREO.get
    bond_rows = [
        (
            bond_type(bond.GetBondType(), _OTHER_BOND_TYPE),
            stereo(bond.GetStereo(), _OTHER_BOND_STEREO),
            bond.GetIsConjugated(),
            bond.IsInRing(),
        )
        for bond in bonds
    ]
    ends = [(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()) for bond in bonds]
    # Bond i becomes edges 2i (begin -> end) and 2i + 1 (end -> begin).
    bond_features = np.array(bond_rows, dtype=np.int64).reshape(-1, _N_BOND_FEATURES).repeat(2, 0)
    pairs = np.array(ends, dtype=np.int64).reshape(-1, 2)
    edge_index = np.ascontiguousarray(np.stack((pairs, pairs[:, ::-1]), axis=1).reshape(-1, 2).T)
    return MolGraph(atom_features=atom_features, bond_features=bond_features, edge_index=edge_index)


def _environment_ids(mol: Chem.Mol) -> np.ndarray:
    """[n_atoms, len(ENVIRONMENT_RADII)] hashed Morgan identifiers; "none" where absent.

    RDKit lists an atom's identifiers by radius (0, 1, 2, ...) and stops early only for an atom
    whose environment cannot grow (no neighbours), which gets the reserved last index.
    """
    output = rdFingerprintGenerator.AdditionalOutput()
    output.AllocateAtomToBits()
    _MORGAN.GetSparseCountFingerprint(mol, additionalOutput=output)
    pairs = tuple(zip(ENVIRONMENT_RADII, ENVIRONMENT_BUCKETS, strict=True))
    rows = [[ids[r] % n if r < len(ids) else n for r, n in pairs] for ids in output.GetAtomToBits()]
    return np.array(rows, dtype=np.int64).reshape(-1, len(ENVIRONMENT_RADII))


# --------------------------------------------------------------------------------------------
# Public API


def featurize(smiles: str) -> MolGraph:
    """Featurize one SMILES; raises :class:`FeaturizeFailure` with a precise reason."""
    with rdBase.BlockLogs():  # bad input is reported via our errors, not stderr
        return _graph_from_mol(_parse(smiles))


def _too_large_reason(graph: MolGraph, max_nodes: int, max_edges: int, what: str) -> str:
    over = []
    if graph.n_atoms > max_nodes:
        over.append(f"{graph.n_atoms} atoms")
    if graph.n_edges > max_edges:
        over.append(f"{graph.n_edges} directed edges")
    limit = f"{what} ({max_nodes} atoms, {max_edges} edges)"
    return f"molecule has {' and '.join(over)}, more than {limit}"


def _fits(graph: MolGraph, max_nodes: int, max_edges: int) -> bool:
    return graph.n_atoms <= max_nodes and graph.n_edges <= max_edges


def featurize_many(
    smiles: Sequence[str], buckets: Sequence[tuple[int, int]] | None = None
) -> tuple[list[MolGraph | None], list[FeaturizeError]]:
    """Featurize a list; bad items become ``None`` plus a :class:`FeaturizeError`, never raise.

    With ``buckets``, a molecule that fits none of them is also an error, so a server can
    reject it up front with the reason instead of failing at padding time.
    """
    graphs, _, errors = featurize_many_with_mols(smiles, buckets)
    return graphs, errors


def featurize_many_with_mols(
    smiles: Sequence[str], buckets: Sequence[tuple[int, int]] | None = None
) -> tuple[list[MolGraph | None], list[Chem.Mol | None], list[FeaturizeError]]:
    """:func:`featurize_many` plus the parsed RDKit molecules (``None`` where it failed), for
    callers that also need canonical SMILES or InChIKeys without parsing every SMILES again."""
    graphs: list[MolGraph | None] = []
    mols: list[Chem.Mol | None] = []
    errors: list[FeaturizeError] = []
    with rdBase.BlockLogs():  # bad input is reported via our errors, not stderr
        for index, item in enumerate(smiles):
            mol: Chem.Mol | None = None
            try:
                mol = _parse(item)
                graph: MolGraph | None = _graph_from_mol(mol)
            except FeaturizeFailure as exc:
                graph = mol = None
                errors.append(FeaturizeError(index, _as_text(item), exc.reason))
            if graph is not None and buckets and choose_bucket(graph, buckets) is None:
                errors.append(
                    FeaturizeError(index, _as_text(item), _no_bucket_reason(graph, buckets))
                )
                graph = mol = None
            graphs.append(graph)
            mols.append(mol)
    return graphs, mols, errors


def _as_text(item: object) -> str:
    return item if isinstance(item, str) else repr(item)


def _no_bucket_reason(graph: MolGraph, buckets: Sequence[tuple[int, int]]) -> str:
    largest = max(buckets)
    if largest == (max(b[0] for b in buckets), max(b[1] for b in buckets)):
        return _too_large_reason(graph, *largest, "the largest bucket")
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
    fitting = [bucket for bucket in buckets if _fits(graph, *bucket)]
    return min(fitting) if fitting else None


def pad_graphs(graphs: Sequence[MolGraph], max_nodes: int, max_edges: int) -> GraphBatch:
    """Pad graphs into one batch; ``ValueError`` names the first graph that does not fit.

    Scatter all graphs at once (concatenate + fancy index) rather than one slice copy per
    graph, which keeps large serving batches cheap.
    """
    if max_nodes < 1 or max_edges < 0:
        raise ValueError(f"need max_nodes >= 1 and max_edges >= 0, got ({max_nodes}, {max_edges})")
    for index, graph in enumerate(graphs):
        if not _fits(graph, max_nodes, max_edges):
            raise ValueError(
                f"graph {index}: "
                + _too_large_reason(graph, max_nodes, max_edges, "the batch shape")
            )

    batch = len(graphs)
    atom_features = np.zeros((batch, max_nodes, _N_ATOM_FEATURES), dtype=np.int64)
    bond_features = np.zeros((batch, max_edges, _N_BOND_FEATURES), dtype=np.int64)
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
    )


def _scatter_positions(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(batch row, position in row) for every real item when row ``b`` holds ``counts[b]``."""
    rows = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    cols = np.arange(rows.size, dtype=np.int64) - np.repeat(starts, counts)
    return rows, cols


def featurize_batch(
    smiles: Sequence[str], max_nodes: int, max_edges: int
) -> tuple[GraphBatch, list[int], list[FeaturizeError]]:
    """Featurize and pad to one shape; returns the batch, input indices of its rows, errors.

    Rows keep input order; unparsable, empty and too-large items are skipped and reported, so a
    single bad item never sinks a request.
    """
    graphs, errors = featurize_many(smiles)
    kept: list[MolGraph] = []
    indices: list[int] = []
    for index, graph in enumerate(graphs):
        if graph is None:
            continue
        if _fits(graph, max_nodes, max_edges):
            kept.append(graph)
            indices.append(index)
        else:
            reason = _too_large_reason(graph, max_nodes, max_edges, "the batch shape")
            errors.append(FeaturizeError(index, _as_text(smiles[index]), reason))
    errors.sort(key=lambda error: error.index)
    return pad_graphs(kept, max_nodes, max_edges), indices, errors


def smallest_fitting_shape(graphs: Sequence[MolGraph]) -> tuple[int, int]:
    """``(max atoms, max edges)`` over ``graphs``, at least ``(1, 1)`` so no axis is empty."""
    max_nodes = max((g.n_atoms for g in graphs), default=0)
    max_edges = max((g.n_edges for g in graphs), default=0)
    return max(max_nodes, 1), max(max_edges, 1)
