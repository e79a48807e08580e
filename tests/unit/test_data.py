"""Tests for molret.data: ChEBI-20 readers, data-folder resolution and library streaming."""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from molret.data import (
    Candidate,
    DataNotFound,
    LibraryRecord,
    Pair,
    chebi20_split,
    iter_library,
    read_candidates,
    read_pairs,
    resolve_data_dir,
)

TEST_DATA = Path(__file__).resolve().parents[1] / "data"
TINY_PAIRS = TEST_DATA / "tiny_pairs.tsv"
TINY_LIBRARY = TEST_DATA / "tiny_library.smi"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _real_chebi20_dir() -> Path:
    return Path(os.environ.get("MOLRET_DATA") or REPO_ROOT.parent / "shared" / "data" / "chebi20")


# --- read_pairs / read_candidates -------------------------------------------------------------


def test_read_pairs_fixture() -> None:
    pairs = read_pairs(TINY_PAIRS)
    assert len(pairs) == 33
    assert all(isinstance(pair, Pair) for pair in pairs)
    assert (pairs[0].cid, pairs[0].smiles) == ("1000001", "CCO")
    assert all(pair.description.startswith("This molecule is") for pair in pairs)
    assert len({pair.cid for pair in pairs}) == len(pairs)


def test_read_pairs_preserves_backslashes_and_quotes_exactly() -> None:
    raw_lines = TINY_PAIRS.read_text(encoding="utf-8").splitlines()[1:]
    raw_smiles = [line.split("\t")[1] for line in raw_lines]
    raw_descriptions = [line.split("\t")[2] for line in raw_lines]
    pairs = read_pairs(TINY_PAIRS)
    assert [pair.smiles for pair in pairs] == raw_smiles
    assert [pair.description for pair in pairs] == raw_descriptions
    assert "C/C=C\\C" in raw_smiles  # the fixture really holds a single literal backslash
    assert any('"' in description for description in raw_descriptions)


def test_fixture_smiles_are_valid() -> None:
    chem = pytest.importorskip("rdkit.Chem")
    invalid = [
        pair.smiles for pair in read_pairs(TINY_PAIRS) if chem.MolFromSmiles(pair.smiles) is None
    ]
    assert invalid == []


def test_read_pairs_reports_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(
        "CID\tSMILES\tdescription\n1\tCCO\tThe molecule is ethanol.\n2\tCO\n", encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"bad\.txt, line 3: expected 3 fields.*found 2"):
        read_pairs(path)


def test_read_pairs_reports_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "nodesc.txt"
    path.write_text("CID\tSMILES\n1\tCCO\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"nodesc\.txt, line 1: no 'description' column"):
        read_pairs(path)


def test_read_pairs_tolerates_bom_crlf_and_trailing_blank_line(tmp_path: Path) -> None:
    path = tmp_path / "windows.txt"
    path.write_bytes(
        b"\xef\xbb\xbfCID\tSMILES\tdescription\r\n7\tC/C=C\\C\tThe molecule is a butene.\r\n\r\n"
    )
    assert read_pairs(path) == [Pair("7", "C/C=C\\C", "The molecule is a butene.")]


def test_read_candidates_with_and_without_description(tmp_path: Path) -> None:
    with_text = read_candidates(TINY_PAIRS)
    assert len(with_text) == 33 and with_text[0].description is not None

    path = tmp_path / "cands.tsv"
    path.write_text("cid\tsmiles\n5\tCCO\n6\tCO\n", encoding="utf-8")
    assert read_candidates(path) == [Candidate("5", "CCO", None), Candidate("6", "CO", None)]

    path.write_text("CID\tSMILES\tdescription\n5\tCCO\t\n", encoding="utf-8")
    assert read_candidates(path) == [Candidate("5", "CCO", None)]


def test_read_candidates_needs_smiles(tmp_path: Path) -> None:
    path = tmp_path / "cands.tsv"
    path.write_text("CID\tdescription\n5\tThe molecule is x.\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'SMILES'"):
        read_candidates(path)


# --- resolve_data_dir / chebi20_split ---------------------------------------------------------


def _make_chebi_dir(root: Path, with_test: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    names = ["train.txt", "validation.txt"] + (["test.txt"] if with_test else [])
    for name in names:
        (root / name).write_text("CID\tSMILES\tdescription\n", encoding="utf-8")
    return root


def test_resolve_data_dir_argument_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOLRET_DATA", str(tmp_path / "elsewhere"))
    assert resolve_data_dir(tmp_path) == tmp_path
    assert resolve_data_dir(str(tmp_path)) == tmp_path


def test_resolve_data_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOLRET_DATA", str(tmp_path))
    assert resolve_data_dir() == tmp_path


def test_resolve_data_dir_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOLRET_DATA", raising=False)
    with pytest.raises(DataNotFound, match="MOLRET_DATA") as info:
        resolve_data_dir()
    assert "train.txt" in str(info.value) and "--data" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)

    missing = tmp_path / "nope"
    with pytest.raises(DataNotFound, match="nope"):
        resolve_data_dir(missing)
    monkeypatch.setenv("MOLRET_DATA", str(missing))
    with pytest.raises(DataNotFound, match=r"\$MOLRET_DATA"):
        resolve_data_dir()


def test_chebi20_split(tmp_path: Path) -> None:
    folder = _make_chebi_dir(tmp_path / "chebi")
    assert chebi20_split(folder) == {
        "train": folder / "train.txt",
        "validation": folder / "validation.txt",
    }
    _make_chebi_dir(folder, with_test=True)
    assert chebi20_split(folder)["test"] == folder / "test.txt"

    (folder / "validation.txt").unlink()
    with pytest.raises(DataNotFound, match="validation.txt"):
        chebi20_split(folder)


@pytest.mark.data
def test_real_chebi20_validation() -> None:
    folder = _real_chebi20_dir()
    path = folder / "validation.txt"
    if not path.is_file():
        pytest.skip(f"ChEBI-20 validation.txt not found at {path}; set MOLRET_DATA to run this")
    with path.open(encoding="utf-8", newline="") as handle:
        raw = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    assert len(raw) == 3301 and {len(fields) for fields in raw} == {3}
    pairs = read_pairs(path)
    assert len(pairs) == 3301
    assert [(p.cid, p.smiles, p.description) for p in pairs] == [tuple(r) for r in raw]
    assert any("\\" in pair.smiles for pair in pairs)
    assert set(chebi20_split(folder)) >= {"train", "validation"}


# --- iter_library ---------------------------------------------------------------------------


def test_iter_library_tiny_smi_fixture() -> None:
    records = list(iter_library(TINY_LIBRARY))
    assert len(records) == 20
    assert records[0] == LibraryRecord(row=0, name="ethanol", smiles="CCO")
    assert [r.row for r in records] == list(range(20))
    assert [r.smiles for r in records].count("CCO") == 2
    by_name = {r.name: r.smiles for r in records}
    assert by_name["benzene"] == "c1ccccc1"  # space separator
    assert by_name["oleic_acid"] == "CCCCCCCC/C=C\\CCCCCCCC(=O)O"


def test_iter_library_smi_rules(tmp_path: Path) -> None:
    path = tmp_path / "lib.smi"
    path.write_text(
        "# made by hand\nSMILES Name\nCCO ethanol\n\nCO\nc1ccccc1\tbenzene ring\r\n",
        encoding="utf-8",
    )
    assert list(iter_library(path)) == [
        LibraryRecord(0, "ethanol", "CCO"),
        LibraryRecord(1, "1", "CO"),
        LibraryRecord(2, "benzene ring", "c1ccccc1"),
    ]


def test_iter_library_smi_gz(tmp_path: Path) -> None:
    path = tmp_path / "lib.smi.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("CCO ethanol\nCO methanol\n")
    assert [(r.name, r.smiles) for r in iter_library(path)] == [
        ("ethanol", "CCO"),
        ("methanol", "CO"),
    ]


def test_iter_library_csv(tmp_path: Path) -> None:
    path = tmp_path / "lib.csv"
    path.write_text(
        'Title,MW,Canonical_SMILES\n"ethanol, absolute",46.07,CCO\n,32.04,CO\nempty,0,\n',
        encoding="utf-8",
    )
    assert list(iter_library(path)) == [
        LibraryRecord(0, "ethanol, absolute", "CCO"),
        LibraryRecord(1, "1", "CO"),  # empty name -> row number
        LibraryRecord(2, "empty", ""),  # empty SMILES still yielded
    ]


def test_iter_library_tsv_gz_and_column_choice(tmp_path: Path) -> None:
    path = tmp_path / "lib.TSV.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write('id\tsmiles\tmy_smiles\n1\tCCO\tOCC\n2\tC/C=C\\C\t"CC"\n')
    assert [(r.name, r.smiles) for r in iter_library(path)] == [("1", "CCO"), ("2", "C/C=C\\C")]
    chosen = list(iter_library(path, smiles_column="my_smiles", name_column="smiles"))
    assert [(r.name, r.smiles) for r in chosen] == [("CCO", "OCC"), ("C/C=C\\C", '"CC"')]


def test_iter_library_without_name_column_uses_row(tmp_path: Path) -> None:
    path = tmp_path / "lib.tsv"
    path.write_text("SMILES\tscore\nCCO\t1\nCO\t2\n", encoding="utf-8")
    assert [r.name for r in iter_library(path)] == ["0", "1"]


def test_iter_library_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown library format"):
        iter_library(tmp_path / "lib.sdf")
    with pytest.raises(ValueError, match="unknown library format"):
        iter_library(tmp_path / "lib.parquet.gz")
    with pytest.raises(FileNotFoundError):
        iter_library(tmp_path / "missing.smi")

    path = tmp_path / "lib.csv"
    path.write_text("name,formula\nethanol,C2H6O\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no SMILES column"):
        iter_library(path)  # raised at the call, before any record is requested
    with pytest.raises(ValueError, match="'structure'"):
        iter_library(path, smiles_column="structure")

    smi = tmp_path / "lib.smi"
    smi.write_text("CCO ethanol\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no columns"):
        iter_library(smi, smiles_column="smiles")

    bad_row = tmp_path / "bad.tsv"
    bad_row.write_text("smiles\tname\nCCO\tethanol\nCO\tmethanol\textra\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 3"):
        list(iter_library(bad_row))


@pytest.mark.parametrize("suffix", [".smi", ".csv"])
def test_iter_library_streams_lazily(tmp_path: Path, suffix: str) -> None:
    # Lines appended after the first record has been read still come out, which would not
    # happen if the whole file had been read up front.
    path = tmp_path / f"big{suffix}"
    separator = " " if suffix == ".smi" else ","
    header = "" if suffix == ".smi" else f"smiles{separator}name\n"
    body = "".join(f"{'C' * (1 + i % 5)}{separator}mol{i}\n" for i in range(20_000))
    path.write_text(header + body, encoding="utf-8")

    records = iter_library(path)
    assert isinstance(records, Iterator)
    assert next(records) == LibraryRecord(0, "mol0", "C")
    with path.open("a", encoding="utf-8") as handle:
        handle.write(f"CCO{separator}appended\n")
    rest = list(records)
    assert len(rest) == 20_000
    assert rest[-1] == LibraryRecord(20_000, "appended", "CCO")


def test_iter_library_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "lib.parquet"
    table = pa.table(
        {
            "CID": pa.array([702, None, 5793], type=pa.int64()),
            "mass": [46.07, 32.04, 180.16],
            "SMILES": ["CCO", "CO", None],
        }
    )
    pq.write_table(table, path, row_group_size=2)
    assert list(iter_library(path)) == [
        LibraryRecord(0, "702", "CCO"),
        LibraryRecord(1, "1", "CO"),
        LibraryRecord(2, "5793", ""),
    ]

    no_smiles = tmp_path / "nosmiles.parquet"
    pq.write_table(pa.table({"name": ["x"]}), no_smiles)
    with pytest.raises(ValueError, match="no SMILES column"):
        iter_library(no_smiles)
