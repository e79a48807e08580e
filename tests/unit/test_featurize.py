"""Tests for molret.featurize: known molecules, error reporting, padding and buckets."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from molret.featurize import (
    ATOM_FEATURE_NAMES,
    ATOM_FEATURE_SIZES,
    BOND_FEATURE_NAMES,
    BOND_FEATURE_SIZES,
    DEFAULT_BUCKETS,
    ENVIRONMENT_BUCKETS,
    ENVIRONMENT_RADII,
    FEATURE_VOCAB_VERSION,
    FeaturizeFailure,
    GraphBatch,
    MolGraph,
    choose_bucket,
    featurize,
    featurize_batch,
    featurize_many,
    pad_graphs,
    smallest_fitting_shape,
)

A = {name: i for i, name in enumerate(ATOM_FEATURE_NAMES)}
B = {name: i for i, name in enumerate(BOND_FEATURE_NAMES)}
# Indices from the documented vocabularies.
CHI_UNSPECIFIED, CHI_CW, CHI_CCW = 0, 1, 2
SINGLE, DOUBLE, AROMATIC = 0, 1, 3
STEREONONE, STEREOZ, STEREOE, STEREOCIS, STEREOTRANS = 0, 2, 3, 4, 5
CHARGE_OFFSET = 5

DATA_DIR = Path(
    os.environ.get("MOLRET_DATA")
    or Path(__file__).resolve().parents[2].parent / "shared" / "data" / "chebi20"
)


def edge_pairs(graph: MolGraph) -> set[tuple[int, int]]:
    return {(int(s), int(d)) for s, d in graph.edge_index.T}


def double_bond_stereo(graph: MolGraph) -> set[int]:
    rows = graph.bond_features[graph.bond_features[:, B["bond_type"]] == DOUBLE]
    return {int(v) for v in rows[:, B["stereo"]]}


def assert_well_formed(graph: MolGraph) -> None:
    assert graph.atom_features.dtype == np.int64
    assert graph.bond_features.dtype == np.int64
    assert graph.edge_index.dtype == np.int64
    assert graph.atom_features.shape == (graph.n_atoms, len(ATOM_FEATURE_SIZES))
    assert graph.bond_features.shape == (graph.n_edges, len(BOND_FEATURE_SIZES))
    assert graph.edge_index.shape == (2, graph.n_edges)
    assert (graph.atom_features >= 0).all()
    assert (graph.atom_features < np.array(ATOM_FEATURE_SIZES)).all()
    assert (graph.bond_features >= 0).all()
    assert (graph.bond_features < np.array(BOND_FEATURE_SIZES)).all()
    if graph.n_edges:
        assert graph.edge_index.min() >= 0
        assert graph.edge_index.max() < graph.n_atoms
    # Every bond appears in both directions, with identical features.
    assert edge_pairs(graph) == {(d, s) for s, d in edge_pairs(graph)}
    np.testing.assert_array_equal(graph.bond_features[0::2], graph.bond_features[1::2])


def test_vocabulary_is_pinned() -> None:
    # Changing any of these changes what a trained model sees: bump FEATURE_VOCAB_VERSION and
    # update this test together.
    assert FEATURE_VOCAB_VERSION == "2"
    assert ATOM_FEATURE_NAMES == (
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
    assert ATOM_FEATURE_SIZES == (120, 10, 12, 12, 10, 6, 9, 2, 2, 4097, 16385)
    assert BOND_FEATURE_NAMES == ("bond_type", "stereo", "conjugated", "in_ring")
    assert BOND_FEATURE_SIZES == (6, 7, 2, 2)
    assert DEFAULT_BUCKETS == ((32, 80), (64, 160), (128, 320), (256, 640))


def test_environment_ids_match_rdkit_morgan() -> None:
    # Each column is RDKit's Morgan identifier of the atom's environment at that radius, folded.
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    smiles = "CC(=O)Oc1ccccc1C(=O)O"
    g = featurize(smiles)
    for radius, buckets in zip(ENVIRONMENT_RADII, ENVIRONMENT_BUCKETS, strict=True):
        generator = rdFingerprintGenerator.GetMorganGenerator(
            radius=radius, includeRedundantEnvironments=True
        )
        output = rdFingerprintGenerator.AdditionalOutput()
        output.AllocateBitInfoMap()
        generator.GetSparseCountFingerprint(Chem.MolFromSmiles(smiles), additionalOutput=output)
        want = {
            atom: identifier % buckets
            for identifier, hits in output.GetBitInfoMap().items()
            for atom, r in hits
            if r == radius
        }
        column = g.atom_features[:, A[f"environment_r{radius}"]]
        assert column.tolist() == [want[i] for i in range(g.n_atoms)]
    # The methyl and the carbonyl carbon of the acetyl group get different identifiers.
    r2 = g.atom_features[:, A["environment_r2"]]
    assert r2[0] != r2[1]


def test_isolated_atoms_have_no_environment() -> None:
    g = featurize("[Na+].[Cl-]")
    for radius, buckets in zip(ENVIRONMENT_RADII, ENVIRONMENT_BUCKETS, strict=True):
        assert g.atom_features[:, A[f"environment_r{radius}"]].tolist() == [buckets, buckets]


def test_ethanol() -> None:
    g = featurize("CCO")
    assert_well_formed(g)
    assert (g.n_atoms, g.n_edges) == (3, 4)
    assert g.atom_features[:, A["atomic_num"]].tolist() == [6, 6, 8]
    assert g.atom_features[:, A["num_hs"]].tolist() == [3, 2, 1]
    assert g.atom_features[:, A["degree"]].tolist() == [1, 2, 1]
    assert g.atom_features[:, A["formal_charge"]].tolist() == [CHARGE_OFFSET] * 3
    assert edge_pairs(g) == {(0, 1), (1, 0), (1, 2), (2, 1)}
    assert (g.bond_features[:, B["bond_type"]] == SINGLE).all()
    # Bond i gives edges 2i (begin -> end) and 2i + 1 (end -> begin).
    assert g.edge_index.tolist() == [[0, 1, 1, 2], [1, 0, 2, 1]]


def test_benzene_is_aromatic_ring() -> None:
    g = featurize("c1ccccc1")
    assert_well_formed(g)
    assert (g.n_atoms, g.n_edges) == (6, 12)
    assert (g.atom_features[:, A["aromatic"]] == 1).all()
    assert (g.atom_features[:, A["in_ring"]] == 1).all()
    assert (g.bond_features[:, B["bond_type"]] == AROMATIC).all()
    assert (g.bond_features[:, B["in_ring"]] == 1).all()
    assert (g.bond_features[:, B["conjugated"]] == 1).all()


def test_salt_is_one_disconnected_graph() -> None:
    g = featurize("[Na+].[Cl-]")
    assert_well_formed(g)
    assert (g.n_atoms, g.n_edges) == (2, 0)
    assert g.edge_index.shape == (2, 0)
    assert g.bond_features.shape == (0, len(BOND_FEATURE_SIZES))
    charges = sorted(int(c) - CHARGE_OFFSET for c in g.atom_features[:, A["formal_charge"]])
    assert charges == [-1, 1]


def test_hydrate_keeps_all_fragments() -> None:
    g = featurize("O.O.CC(=O)O")
    assert_well_formed(g)
    assert (g.n_atoms, g.n_edges) == (6, 6)


def test_isotope_single_atom() -> None:
    g = featurize("[125Te]")
    assert_well_formed(g)
    assert (g.n_atoms, g.n_edges) == (1, 0)
    assert g.atom_features[0, A["atomic_num"]] == 52


def test_tetrahedral_stereocentre() -> None:
    g = featurize("C[C@H](N)C(=O)O")  # L-alanine
    chirality = g.atom_features[:, A["chirality"]].tolist()
    assert chirality[1] in (CHI_CW, CHI_CCW)
    assert all(c == CHI_UNSPECIFIED for i, c in enumerate(chirality) if i != 1)
    enantiomer = featurize("C[C@@H](N)C(=O)O")
    assert enantiomer.atom_features[1, A["chirality"]] != chirality[1]


def test_double_bond_stereo() -> None:
    assert double_bond_stereo(featurize("C/C=C/C")) <= {STEREOE, STEREOTRANS}
    assert double_bond_stereo(featurize("C/C=C/C")) != set()
    assert double_bond_stereo(featurize("CC=CC")) == {STEREONONE}


def test_chebi_double_backslash_parses_like_single() -> None:
    # ChEBI-20 files contain a literal "\\" in SMILES; RDKit reads it as one "\" bond direction.
    chebi_style = "C/C=C\\\\C"
    assert chebi_style.count("\\") == 2
    g = featurize(chebi_style)
    assert double_bond_stereo(g) <= {STEREOZ, STEREOCIS}
    single = featurize("C/C=C\\C")
    np.testing.assert_array_equal(g.atom_features, single.atom_features)
    np.testing.assert_array_equal(g.bond_features, single.bond_features)


def test_radical() -> None:
    g = featurize("[CH2]C")
    assert g.atom_features[:, A["radical_electrons"]].tolist() == [1, 0]


def test_unknown_values_clip_to_other() -> None:
    g = featurize("[Xe+9]")  # charge +9 is outside -5..+5
    assert g.atom_features[0, A["formal_charge"]] == ATOM_FEATURE_SIZES[A["formal_charge"]] - 1
    assert_well_formed(g)


def test_featurize_raises_with_reason() -> None:
    with pytest.raises(FeaturizeFailure) as info:
        featurize("C1CC")
    assert isinstance(info.value, ValueError)
    assert info.value.reason.startswith("unparsable SMILES")
    assert "ring" in info.value.reason  # RDKit's own message: "unclosed ring"
    with pytest.raises(FeaturizeFailure, match="empty SMILES"):
        featurize("   ")
    with pytest.raises(FeaturizeFailure, match="valence"):
        featurize("C(C)(C)(C)(C)C")
    with pytest.raises(FeaturizeFailure, match="whitespace"):
        featurize("CCO CCC")  # RDKit alone would silently return ethanol


def test_featurize_many_reports_bad_items_and_keeps_good_ones(
    capfd: pytest.CaptureFixture[str],
) -> None:
    smiles = ["CCO", "C1CC", "not a smiles", "C(C)(C)(C)(C)C", "", "c1ccccc1", "CC("]
    graphs, errors = featurize_many(smiles)
    assert len(graphs) == len(smiles)
    assert [g is not None for g in graphs] == [True, False, False, False, False, True, False]
    assert graphs[0] is not None and graphs[0].n_atoms == 3
    assert graphs[5] is not None and graphs[5].n_atoms == 6
    by_index = {e.index: e for e in errors}
    assert sorted(by_index) == [1, 2, 3, 4, 6]
    assert all(by_index[i].smiles == smiles[i] for i in by_index)
    assert by_index[1].reason.startswith("unparsable SMILES")
    assert by_index[2].reason  # whitespace: RDKit would only have read "not"
    assert by_index[3].reason.startswith("RDKit sanitization failed")
    assert "valence" in by_index[3].reason
    assert by_index[4].reason == "empty SMILES"
    assert "position 3" in by_index[6].reason
    # RDKit's C++ logger must not leak to stderr: the reasons carry the information.
    assert capfd.readouterr().err == ""


def test_featurize_many_never_raises_on_non_strings() -> None:
    graphs, errors = featurize_many(["CCO", None])  # type: ignore[list-item]
    assert graphs[1] is None
    assert errors[0].index == 1 and "str" in errors[0].reason


def test_featurize_many_with_buckets_rejects_too_large() -> None:
    graphs, errors = featurize_many(["CCO", "C" * 300], buckets=DEFAULT_BUCKETS)
    assert graphs[0] is not None and graphs[1] is None
    assert errors[0].index == 1
    assert errors[0].reason == (
        "molecule has 300 atoms, more than the largest bucket (256 atoms, 640 edges)"
    )


def test_pad_graphs_layout() -> None:
    ethanol, salt = featurize("CCO"), featurize("[Na+].[Cl-]")
    batch = pad_graphs([ethanol, salt], max_nodes=5, max_edges=6)
    assert isinstance(batch, GraphBatch)
    assert (batch.batch_size, batch.max_nodes, batch.max_edges) == (2, 5, 6)
    assert batch.atom_features.shape == (2, 5, len(ATOM_FEATURE_SIZES))
    assert batch.bond_features.shape == (2, 6, len(BOND_FEATURE_SIZES))
    for name in ("atom_features", "bond_features", "edge_src", "edge_dst"):
        assert getattr(batch, name).dtype == np.int64, name
    assert batch.atom_mask.dtype == bool and batch.edge_mask.dtype == bool
    assert batch.atom_mask.tolist() == [[True] * 3 + [False] * 2, [True] * 2 + [False] * 3]
    assert batch.edge_mask.tolist() == [[True] * 4 + [False] * 2, [False] * 6]
    np.testing.assert_array_equal(batch.atom_features[0, :3], ethanol.atom_features)
    np.testing.assert_array_equal(batch.atom_features[1, :2], salt.atom_features)
    np.testing.assert_array_equal(batch.bond_features[0, :4], ethanol.bond_features)
    np.testing.assert_array_equal(batch.edge_src[0, :4], ethanol.edge_index[0])
    np.testing.assert_array_equal(batch.edge_dst[0, :4], ethanol.edge_index[1])
    # Padding: feature rows zero, padding edges point at node 0.
    assert not batch.atom_features[~batch.atom_mask].any()
    assert not batch.bond_features[~batch.edge_mask].any()
    assert not batch.edge_src[~batch.edge_mask].any()
    assert not batch.edge_dst[~batch.edge_mask].any()


def test_pad_graphs_names_graph_that_does_not_fit() -> None:
    graphs = [featurize("CCO"), featurize("CCCCCC")]
    with pytest.raises(ValueError, match=r"graph 1: molecule has 6 atoms and 10 directed edges"):
        pad_graphs(graphs, max_nodes=4, max_edges=6)
    empty = pad_graphs([], max_nodes=4, max_edges=6)
    assert empty.atom_features.shape == (0, 4, len(ATOM_FEATURE_SIZES))


def test_featurize_batch_keeps_order_and_reports_per_item() -> None:
    smiles = ["C" * 40, "CCO", "C1CC", "[Na+].[Cl-]", "", "c1ccccc1"]
    batch, indices, errors = featurize_batch(smiles, max_nodes=32, max_edges=80)
    assert indices == [1, 3, 5]
    assert batch.batch_size == 3 and (batch.max_nodes, batch.max_edges) == (32, 80)
    assert batch.atom_mask.sum(axis=1).tolist() == [3, 2, 6]
    assert batch.edge_mask.sum(axis=1).tolist() == [4, 0, 12]
    assert [e.index for e in errors] == [0, 2, 4]
    assert (
        errors[0].reason == "molecule has 40 atoms, more than the batch shape (32 atoms, 80 edges)"
    )
    assert errors[1].reason.startswith("unparsable SMILES")
    assert errors[2].reason == "empty SMILES"


def test_featurize_batch_all_bad_gives_empty_batch() -> None:
    batch, indices, errors = featurize_batch(["", "C1CC"], max_nodes=8, max_edges=8)
    assert batch.batch_size == 0 and indices == [] and len(errors) == 2


def test_choose_bucket() -> None:
    assert choose_bucket(featurize("CCO")) == (32, 80)
    assert choose_bucket(featurize("C" * 40)) == (64, 160)
    assert choose_bucket(featurize("C" * 300)) is None
    # Order of the bucket list does not matter, and both counts must fit.
    ethanol = featurize("CCO")  # 3 atoms, 4 edges
    assert choose_bucket(ethanol, [(3, 4), (3, 2)]) == (3, 4)
    assert choose_bucket(ethanol, [(8, 8), (3, 4)]) == (3, 4)
    assert choose_bucket(ethanol, [(2, 80)]) is None


def test_smallest_fitting_shape() -> None:
    graphs = [featurize("CCO"), featurize("c1ccccc1")]
    assert smallest_fitting_shape(graphs) == (6, 12)
    assert smallest_fitting_shape([featurize("[Na+].[Cl-]")]) == (2, 1)
    assert smallest_fitting_shape([]) == (1, 1)


@pytest.mark.data
def test_real_data_features_within_vocab() -> None:
    path = DATA_DIR / "train.txt"
    if not path.exists():
        pytest.skip(f"ChEBI-20 not found at {DATA_DIR} (set MOLRET_DATA)")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        column = next(reader).index("SMILES")
        smiles = [row[column] for _, row in zip(range(500), reader, strict=False)]
    graphs, errors = featurize_many(smiles)
    assert len(errors) <= 5, errors
    for graph in graphs:
        if graph is not None:
            assert_well_formed(graph)


def test_edges_agree_with_torch_geometric() -> None:
    pytest.importorskip("torch_geometric", reason="torch_geometric not installed")
    from torch_geometric.utils import from_smiles

    for smiles in ["CCO", "c1ccccc1", "[Na+].[Cl-]", "C[C@H](N)C(=O)O", "C/C=C/C", "O.O.CC(=O)O"]:
        ours = featurize(smiles)
        ref = from_smiles(smiles)
        assert ref.num_nodes == ours.n_atoms, smiles
        assert ref.edge_index.shape[1] == ours.n_edges, smiles
        ref_pairs = {(int(s), int(d)) for s, d in ref.edge_index.t().tolist()}
        assert ref_pairs == edge_pairs(ours), smiles
        # Columns whose encoding matches PyG's (its degree is GetTotalDegree, ours GetDegree).
        for name in ("atomic_num", "chirality", "formal_charge", "num_hs", "aromatic", "in_ring"):
            ref_col = ref.x[:, A[name]].numpy()
            np.testing.assert_array_equal(ref_col, ours.atom_features[:, A[name]], err_msg=name)


# --------------------------------------------------------------------------------------------
# MACCS keys (only for models that take them)


def test_maccs_keys_are_rdkits_and_only_on_request() -> None:
    from rdkit import Chem
    from rdkit.Chem import MACCSkeys

    from molret.featurize import N_MOLECULE_KEYS

    aspirin = "CC(=O)Oc1ccccc1C(=O)O"
    assert featurize(aspirin).keys is None
    graph = featurize(aspirin, keys=True)
    assert graph.keys is not None
    assert graph.keys.shape == (N_MOLECULE_KEYS,) and graph.keys.dtype == np.uint8
    expected = set(MACCSkeys.GenMACCSKeys(Chem.MolFromSmiles(aspirin)).GetOnBits())
    assert set(np.flatnonzero(graph.keys).tolist()) == expected
    batch = pad_graphs([graph, featurize("CCO", keys=True)], 32, 64)
    assert batch.molecule_keys is not None and batch.molecule_keys.shape == (2, N_MOLECULE_KEYS)
    assert batch.molecule_keys.dtype == np.float32
    np.testing.assert_array_equal(batch.molecule_keys[0], graph.keys)
    assert pad_graphs([featurize("CCO")], 32, 64).molecule_keys is None
    with pytest.raises(ValueError, match="graph 1 has no molecule keys"):
        pad_graphs([graph, featurize("CCO")], 32, 64)


def test_maccs_keys_follow_bad_input_rules() -> None:
    graphs, errors = featurize_many(["CCO", "not a smiles", "c1ccccc1"], keys=True)
    assert [g is None for g in graphs] == [False, True, False]
    assert [e.index for e in errors] == [1]
    assert all(g.keys is not None for g in graphs if g is not None)
