"""Small-size runs of the export benchmarks (so they do not rot): shape and sanity, not speed.

export_precision.py runs on the tiny hand-written data set with the smoke run; the towers
section of embed_throughput.py reads real ChEBI-20 texts and SMILES and skips without them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import real_data_dir

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def bench(script: str, *args: object, data: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MOLRET_DATA": str(data)}
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *map(str, args)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def test_export_precision_small(
    smoke_run: Path, smoke_bundle: Path, shared_cache: Path, tmp_path: Path
) -> None:
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    (bundles / "fp32").symlink_to(smoke_bundle)  # reused, not exported again
    out = tmp_path / "precision.json"
    data = smoke_run.parent / "data"
    bench(
        "export_precision.py", "--run", smoke_run, "--bundles", bundles, "--data", data,
        "--cache", shared_cache, "--threads", 1, "--json", out, data=data,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"pytorch", "fp32", "int8"}
    fp32, torch_ = report["results"]["fp32"], report["results"]["pytorch"]
    assert fp32["min_cosine_vs_pytorch"]["text"] >= 0.9999
    assert fp32["min_cosine_vs_pytorch"]["molecule"] >= 0.9999
    for direction in ("text_to_molecule", "molecule_to_text"):
        got, want = fp32["metrics"][direction], torch_["metrics"][direction]
        assert abs(got["mrr"] - want["mrr"]) <= 0.001
    assert report["results"]["int8"]["molecules_per_s"] > 0
    assert report["queries"] > 0 and report["pool"] >= report["queries"]


@pytest.mark.data
def test_embed_throughput_towers_small(smoke_run: Path, smoke_bundle: Path, tmp_path: Path) -> None:
    data = real_data_dir()
    if data is None:
        pytest.skip("needs ChEBI-20 validation.txt at MOLRET_DATA or ../shared/data/chebi20")
    out = tmp_path / "towers.json"
    bench(
        "embed_throughput.py", "--bundle", smoke_bundle, "--run", smoke_run, "--threads", 1,
        "--seconds", 0.2, "--batch-sizes", "1,8", "--json", out, data=data,
    )  # fmt: skip
    rows = json.loads(out.read_text())["towers"]["rows"]
    cells = {(r["backend"], r["modality"], r["batch"]) for r in rows}
    for backend in ("pytorch-eager", "ort-fp32"):
        for modality in ("text", "molecule"):
            assert {(backend, modality, 1), (backend, modality, 8)} <= cells
    assert all(r["per_s"] > 0 for r in rows)
    assert all(r["vs_ort_fp32"] == 1.0 for r in rows if r["backend"] == "ort-fp32")


def test_gpu_towers_kit_small(smoke_run: Path, tmp_path: Path) -> None:
    """prepare -> measure on the CPU only: the kit round-trips and every form agrees."""
    kit, out = tmp_path / "kit", tmp_path / "gpu_towers.json"
    data = smoke_run.parent / "data"
    bench("gpu_towers.py", "prepare", "--run", smoke_run, "--data", data, "--out", kit, data=data)
    assert json.loads((kit / "kit.json").read_text())["items"] == 9
    bench(
        "gpu_towers.py", "measure", "--kit", kit, "--json", out, "--devices", "cpu",
        "--seconds", 0.05, "--cpu-batch-cap", 1, data=data,
    )  # fmt: skip
    report = json.loads(out.read_text())
    cells = {(r["modality"], r["form"], r["batch"]) for r in report["rows"]}
    assert cells == {("text", "encoder", 1)} | {
        ("molecule", f, 1) for f in ("dense", "packed", "pyg")
    }
    assert all(r["per_s"] > 0 and r["vs_cpu_fp32"] == 1.0 for r in report["rows"])
    # The kit's fp16-stored weights reload identically; the three molecule forms (exported dense,
    # packed, torch-geometric) compute the same vectors.
    parity = report["parity_vs_cpu_fp32"]["cpu-fp32"]
    assert set(parity) == {"text", "molecule-dense", "molecule-packed", "molecule-pyg"}
    assert all(v["min"] >= 0.9999 for v in parity.values())
    assert report["parity_items"] == 9


def test_text_chunk_budget_small(smoke_run: Path, smoke_bundle: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MOLRET_DATA": str(smoke_run.parent / "data")}
    script = REPO / "benchmarks" / "text_chunk_budget.py"
    result = subprocess.run(
        [sys.executable, str(script), "--bundle", str(smoke_bundle), "--budgets", "1,512",
         "--texts", "9", "--threads", "1"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rates = [
        line.split(":")[1].split()[0] for line in result.stdout.splitlines() if "max_tokens" in line
    ]
    assert len(rates) == 2 and all(float(r) > 0 for r in rates), result.stdout
