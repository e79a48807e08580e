"""`molret index build` end to end: real bundle, ONNX Runtime, USearch; kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from molret.engine.index_build import REJECTS_FILE, build_index, read_rejects
from molret.engine.index_store import INDEX_JSON, IndexStore

REPO = Path(__file__).resolve().parents[2]
ERRORS_LIBRARY = REPO / "tests" / "data" / "library_with_errors.smi"
PAIRS = REPO / "tests" / "data" / "tiny_pairs.tsv"
# library_with_errors.smi: 39 rows = 29 unique valid + 5 rewritten duplicates + 5 invalid.
N_ROWS, N_ACCEPTED, N_DUPLICATES, N_REJECTED = 39, 29, 5, 5


def molret(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "molret.cli", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def generated_library(path: Path) -> Path:
    """~300 rows built from chains and substituents, with a few bad rows and duplicates."""
    substituents = ["O", "N", "Cl", "F", "Br", "C(=O)O", "C#N", "c1ccccc1", "C1CCCCC1", "S"]
    substituents += ["C(=O)N", "OC", "I"]
    lines = []
    for n in range(1, 21):
        for sub in substituents:
            lines.append(f"{'C' * n}{sub}\tmol_{n}_{len(lines)}")
            if len(lines) % 29 == 0:
                lines.append(f"C1CC{n}\tbroken_{len(lines)}")
            if len(lines) % 37 == 0:
                lines.append(f"O{'C' * n}\tdup_{len(lines)}")  # = C..CO written backwards
    path.write_text("\n".join(lines) + "\n")
    return path


def store_rows(path: Path) -> list[tuple[object, ...]]:
    with IndexStore.open(path) as store:
        records = store.records(range(store.size))
        return [
            (r.key, r.name, r.smiles, r.canonical_smiles, r.inchikey, r.text)
            for r in records
            if r is not None
        ]


def store_vectors(path: Path) -> np.ndarray:
    with IndexStore.open(path) as store:
        return store.get_vectors(range(store.size))


def test_build_counts_rejects_and_self_search(smoke_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "ix"
    report = build_index(smoke_bundle, ERRORS_LIBRARY, out, progress=False, shard_size=8)
    assert (report.accepted, report.duplicates, report.rejected) == (
        N_ACCEPTED,
        N_DUPLICATES,
        N_REJECTED,
    )
    assert report.accepted + report.duplicates + report.rejected == N_ROWS == report.rows
    assert report.shards == 5

    rejects = read_rejects(out / REJECTS_FILE)
    assert [r["name"] for r in rejects] == [
        "broken_ring",
        "broken_branch",
        "not_a_smiles",
        "pentavalent_carbon",
        "over_size_alkane",
    ]
    assert [r["row"] for r in rejects] == ["6", "7", "8", "9", "36"]
    reasons = [r["reason"] for r in rejects]
    assert reasons[0].startswith("unparsable SMILES") and "unclosed ring" in reasons[0]
    assert "sanitization" in reasons[3]
    assert "300 atoms, more than the largest bucket" in reasons[4]

    with IndexStore.open(out) as store:
        assert store.size == N_ACCEPTED and store.kind == "molecule"
        names = [r.name for r in store.records(range(store.size)) if r]
        assert names[:3] == ["ethanol", "benzene", "acetic_acid"]  # first spelling is kept
        ethanol = store.records([0])[0]
        assert ethanol is not None and ethanol.canonical_smiles == "CCO"
        assert ethanol.inchikey == "LFQSCWFLJHTTHZ-UHFFFAOYSA-N"
        vectors = store.get_vectors(range(store.size))
        keys, scores = store.search(vectors, 3)
        # Every stored vector finds itself first (up to exact ties of the tiny model).
        for key in range(store.size):
            assert keys[key, 0] == key or scores[key, 0] - scores[key, 1] < 1e-4
        assert np.mean(keys[:, 0] == np.arange(store.size)) > 0.9
        assert np.allclose(scores[:, 0], 1.0, atol=1e-3)
    state = json.loads((out / INDEX_JSON).read_text())["build_state"]
    assert state["complete"] and state["rows_done"] == N_ROWS


def test_worker_processes_give_the_same_index(smoke_bundle: Path, tmp_path: Path) -> None:
    build_index(smoke_bundle, ERRORS_LIBRARY, tmp_path / "one", progress=False, shard_size=8)
    report = build_index(
        smoke_bundle, ERRORS_LIBRARY, tmp_path / "two", workers=2, progress=False, shard_size=8
    )
    assert (report.accepted, report.duplicates, report.rejected) == (29, 5, 5)
    assert store_rows(tmp_path / "one") == store_rows(tmp_path / "two")
    assert np.allclose(store_vectors(tmp_path / "one"), store_vectors(tmp_path / "two"), atol=2e-3)
    assert (tmp_path / "one" / REJECTS_FILE).read_text() == (
        tmp_path / "two" / REJECTS_FILE
    ).read_text()


def test_kill_and_resume_equals_uninterrupted_build(smoke_bundle: Path, tmp_path: Path) -> None:
    library = generated_library(tmp_path / "generated.smi")
    n_rows = len(library.read_text().splitlines())
    reference = build_index(smoke_bundle, library, tmp_path / "reference", progress=False)

    out = tmp_path / "killed"
    args = ["index", "build", "--bundle", str(smoke_bundle), "--library", str(library)]
    args += ["--out", str(out), "--shard-size", "8", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "molret.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    killed_at = None
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                state = json.loads((out / INDEX_JSON).read_text())["build_state"]
            except (OSError, ValueError, KeyError, TypeError):
                state = None
            if state and state["rows_done"] > 0:
                process.send_signal(signal.SIGKILL)
                killed_at = state["rows_done"]
                break
            time.sleep(0.005)
    finally:
        if process.poll() is None and killed_at is None:
            process.kill()
        process.wait(timeout=30)
    assert killed_at is not None, process.stderr.read() if process.stderr else ""
    print("killed after row", killed_at, "of", n_rows)
    assert process.returncode == -signal.SIGKILL
    interrupted = json.loads((out / INDEX_JSON).read_text())["build_state"]
    assert not interrupted["complete"] and 0 < interrupted["rows_done"] < n_rows

    resumed = molret(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed after row" in resumed.stdout

    assert store_rows(out) == store_rows(tmp_path / "reference")
    assert np.allclose(store_vectors(out), store_vectors(tmp_path / "reference"), atol=2e-3)
    assert (out / REJECTS_FILE).read_text() == (tmp_path / "reference" / REJECTS_FILE).read_text()
    final = json.loads((out / INDEX_JSON).read_text())
    assert final["count"] == reference.accepted
    for name in ("accepted", "duplicates", "rejected", "rows_done"):
        assert (
            final["build_state"][name]
            == json.loads((tmp_path / "reference" / INDEX_JSON).read_text())["build_state"][name]
        )
    assert reference.rejected > 0 and reference.duplicates > 0
    assert reference.accepted + reference.duplicates + reference.rejected == n_rows

    again = molret(*args)  # a finished build is left as it is
    assert again.returncode == 0, again.stderr
    assert store_rows(out) == store_rows(tmp_path / "reference")


def test_limit_then_continue(smoke_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "ix"
    first = build_index(smoke_bundle, ERRORS_LIBRARY, out, progress=False, shard_size=4, limit=10)
    assert first.rows == 10 and (first.accepted, first.duplicates, first.rejected) == (3, 3, 4)
    rest = build_index(smoke_bundle, ERRORS_LIBRARY, out, progress=False, shard_size=4)
    assert rest.resumed_from == 10 and rest.rows == N_ROWS
    assert (rest.accepted, rest.duplicates, rest.rejected) == (29, 5, 5)
    assert len(read_rejects(out / REJECTS_FILE)) == 5


def test_resume_with_other_settings_is_refused(smoke_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "ix"
    build_index(smoke_bundle, ERRORS_LIBRARY, out, progress=False, limit=5)
    result = molret(
        "index", "build", "--bundle", str(smoke_bundle), "--library", str(ERRORS_LIBRARY),
        "--out", str(out), "--dtype", "i8", "--quiet",
    )  # fmt: skip
    assert result.returncode == 2
    assert "error: index" in result.stderr and "dtype 'f16' (asked 'i8')" in result.stderr


def test_text_index_from_pairs(smoke_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "texts"
    report = build_index(smoke_bundle, PAIRS, out, kind="text", progress=False, shard_size=10)
    n_pairs = len(PAIRS.read_text().splitlines()) - 1
    assert report.accepted == n_pairs and report.rejected == 0 and report.duplicates == 0
    with IndexStore.open(out) as store:
        assert store.kind == "text" and store.size == n_pairs
        first = store.records([0])[0]
        assert first is not None and first.text and first.inchikey is None and first.name
        assert first.canonical_smiles is not None
        keys, _ = store.search(store.get_vectors(range(store.size)), 1)
        assert np.mean(keys[:, 0] == np.arange(store.size)) > 0.9


def test_csv_library_rejects_empty_smiles(smoke_bundle: Path, tmp_path: Path) -> None:
    library = tmp_path / "lib.csv"
    library.write_text('smiles,name\nCCO,ethanol\n,nothing\nc1ccccc1,"benzene, plain"\n')
    report = build_index(smoke_bundle, library, tmp_path / "ix", progress=False)
    assert (report.accepted, report.rejected) == (2, 1)
    (reject,) = read_rejects(tmp_path / "ix" / REJECTS_FILE)
    assert (reject["row"], reject["name"], reject["reason"]) == ("1", "nothing", "empty SMILES")
    assert [r[1] for r in store_rows(tmp_path / "ix")] == ["ethanol", "benzene, plain"]


def test_cli_errors_exit_2(smoke_bundle: Path, tmp_path: Path) -> None:
    missing = molret(
        "index", "build", "--bundle", str(smoke_bundle), "--library",
        str(tmp_path / "none.smi"), "--out", str(tmp_path / "ix"),
    )  # fmt: skip
    assert missing.returncode == 2 and "error: library" in missing.stderr
    assert "does not exist" in missing.stderr
    bad_bundle = molret(
        "index", "build", "--bundle", str(tmp_path), "--library", str(ERRORS_LIBRARY),
        "--out", str(tmp_path / "ix"),
    )  # fmt: skip
    assert bad_bundle.returncode == 2 and "error: bundle" in bad_bundle.stderr


def test_ray_without_ray_is_a_clear_error(smoke_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("rdkit")
    try:
        import ray  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("ray is installed")
    with pytest.raises(RuntimeError, match=r"pip install 'molret\[cluster\]'"):
        build_index(
            smoke_bundle, ERRORS_LIBRARY, tmp_path / "ix", progress=False, ray_address="auto"
        )


def test_resume_after_death_right_after_create(smoke_bundle: Path, tmp_path: Path) -> None:
    """index.json exists but nothing was saved yet: the build starts cleanly there."""
    from molret.bundle import load_bundle

    bundle = load_bundle(smoke_bundle, verify=False)
    out = tmp_path / "ix"
    IndexStore.create(out, "molecule", bundle.embedding_dim, bundle.bundle_id).close()
    report = build_index(smoke_bundle, ERRORS_LIBRARY, out, progress=False)
    assert (report.accepted, report.duplicates, report.rejected) == (29, 5, 5)


def test_parquet_library(smoke_bundle: Path, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    library = tmp_path / "lib.parquet"
    table = pa.table({"CID": [1, 2, 3], "SMILES": ["CCO", "OCC", "C1CC"]})
    parquet.write_table(table, library)
    report = build_index(smoke_bundle, library, tmp_path / "ix", progress=False)
    assert (report.accepted, report.duplicates, report.rejected) == (1, 1, 1)
    assert [r[1] for r in store_rows(tmp_path / "ix")] == ["1"]
