"""Small-size runs of the library benchmarks as subprocesses: make_library.py, index_recall.py
and embed_throughput.py --library. Shape and sanity of their output, never speed.

They fragment real ChEBI-20 molecules, so they skip without the data (MOLRET_DATA, or
../shared/data/chebi20 beside the checkout).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import real_data_dir
from rdkit import Chem

REPO = Path(__file__).resolve().parents[2]
DATA = real_data_dir()
N_LIBRARY = 300

pytestmark = [
    pytest.mark.slow,
    pytest.mark.data,
    pytest.mark.skipif(
        DATA is None,
        reason="needs ChEBI-20 (train.txt) at MOLRET_DATA or ../shared/data/chebi20",
    ),
]


def bench(script: str, *args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MOLRET_DATA": str(DATA)}
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *map(str, args)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, (
        f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def libraries(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same library made twice, by one worker and by two (fragments of 3000 molecules)."""
    root = tmp_path_factory.mktemp("libraries")
    made = []
    for workers in (1, 2):
        out = root / f"workers{workers}.smi"
        bench("make_library.py", "--n", N_LIBRARY, "--seed", 5, "--out", out,
              "--sources", 3000, "--workers", workers)  # fmt: skip
        made.append(out)
    return made[0], made[1]


def test_make_library_is_deterministic_valid_and_unique(libraries: tuple[Path, Path]) -> None:
    first, second = libraries
    assert first.read_bytes() == second.read_bytes(), "output depends on the worker count"
    lines = first.read_text().splitlines()
    assert len(lines) == N_LIBRARY
    inchikeys, names = set(), set()
    for line in lines:
        smiles, name = line.split("\t")
        mol = Chem.MolFromSmiles(smiles)
        assert mol is not None, smiles
        assert 10 <= mol.GetNumHeavyAtoms() <= 60
        assert Chem.MolToSmiles(mol) == smiles, "not canonical"
        inchikeys.add(Chem.MolToInchiKey(mol))
        names.add(name)
    assert len(inchikeys) == N_LIBRARY and len(names) == N_LIBRARY
    assert lines[0].endswith("\tGEN000000000")


def test_index_recall_small(
    libraries: tuple[Path, Path], smoke_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "recall.json"
    bench("index_recall.py", "--bundle", smoke_bundle, "--library", libraries[0],
          "--chebi", DATA, "--chebi-limit", 200, "--queries", 40, "--workers", 1,
          "--json", out)  # fmt: skip
    report = json.loads(out.read_text())
    assert {"date", "machine", "bundle", "settings", "pool", "build", "queries", "exact"} <= set(
        report
    )
    build = report["build"]
    assert build["rows"] == 200 + N_LIBRARY
    assert build["accepted"] + build["duplicates"] + build["rejected"] == build["rows"]
    assert build["rows_per_s"] > 0
    assert report["queries"]["text"] == 40 and 0 < report["queries"]["molecule"] <= 40
    assert report["queries"]["index_size"] == build["accepted"]
    assert 0.0 <= report["exact"]["text"]["true_hits@10"] <= 1.0
    assert set(report["dtypes"]) == {"f32", "f16", "i8"}
    for dtype, entry in report["dtypes"].items():
        assert entry["add_per_s"] > 0 and entry["disk_bytes"]["vectors.usearch"] > 0
        for kind in ("text", "molecule"):
            cells = entry[kind]
            assert 0.0 <= cells["recall@10"] <= cells["recall@10_tie_aware"] <= 1.0, dtype
            assert cells["batch_qps"] > 0 and cells["single_qps"] > 0
    # 500 vectors, ef 64: HNSW over f32 is practically exact
    assert report["dtypes"]["f32"]["molecule"]["recall@10_tie_aware"] >= 0.9


def test_embed_throughput_library_small(
    libraries: tuple[Path, Path], smoke_bundle: Path, smoke_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "throughput.json"
    bench("embed_throughput.py", "--bundle", smoke_bundle, "--library", libraries[0],
          "--limit", N_LIBRARY, "--workers", 1, "--threads", 1, "--sample", 100,
          "--torch-sample", 100, "--run", smoke_run, "--json", out)  # fmt: skip
    report = json.loads(out.read_text())
    assert "towers" not in report, "the towers section runs only without --library or with --towers"
    library = report["library"]
    assert library["rows"] == N_LIBRARY
    assert library["accepted"] + library["duplicates"] + library["rejected"] == N_LIBRARY
    assert library["accepted"] >= N_LIBRARY - 5  # generated molecules are valid and unique
    assert library["rows_per_s"] > 0 and library["peak_rss_mb"] > 0
    stages = library["stages_s"]
    for stage in ("read", "featurize", "inference", "index_add", "save", "setup"):
        assert stages[stage] >= 0, stage
    assert sum(stages.values()) == pytest.approx(library["seconds"], abs=0.01)
    floor = library["floor"]
    assert floor["n"] == 100 and floor["rdkit_parse_per_s"] > floor["build_worker_per_s"] > 0
    for backend in ("ort-inline", "pytorch-eager"):
        naive = library["naive"][backend]
        assert naive["n"] == 100 and naive["added"] >= 95 and naive["per_s"] > 0, backend
