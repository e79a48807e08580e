"""`molret quickstart` end to end on the hand-written ChEBI-shaped data with configs/smoke.yaml:
training, export, both indexes, a real gRPC server and the example queries; then a rerun that
reuses everything, and the message when the data is missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from molret.cli import app

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ASPIRIN = "CC(=O)OC1=CC=CC=C1C(=O)O"


def run_quickstart(data: Path, out: Path, cache: Path) -> str:
    args = ["quickstart", "--data", str(data), "--out", str(out), "--cache", str(cache)]
    args += ["--config", str(REPO / "configs" / "smoke.yaml"), "--threads", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output[-3000:], result.exception)
    return result.output


def hit_rows(output: str, title: str) -> list[list[str]]:
    """The table rows (rank, score, CID, value) printed under the query titled ``title``."""
    section = output.split(title, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        fields = line.split(None, 3)
        if fields[:1] == ["rank"]:
            continue
        if len(fields) < 4 or not fields[0].isdigit():
            if rows:
                break
            continue
        rows.append(fields)
    return rows


def test_quickstart_runs_then_reuses(tiny_data: Path, shared_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "qs"
    first = run_quickstart(tiny_data, out, shared_cache)
    for stage in ("train", "export bundle", "molecule index", "text index", "time per stage"):
        assert stage in first
    assert "trained" in first and "exported" in first
    table = first.split("== time per stage", 1)[1]
    assert re.search(r"export bundle .* RSS \d+\.\d GiB, peak \d+\.\d GiB", table)
    assert (out / "bundle" / "manifest.json").is_file()

    similar = hit_rows(first, "molecule -> molecules: aspirin")
    assert len(similar) == 5
    assert [int(r[0]) for r in similar] == [1, 2, 3, 4, 5]
    assert similar[0][3] == ASPIRIN and float(similar[0][1]) > 0.99  # itself, first
    scores = [float(r[1]) for r in similar]
    assert scores == sorted(scores, reverse=True)
    assert len(hit_rows(first, "text -> molecules:")) == 5
    texts = hit_rows(first, "molecule -> texts: caffeine")
    assert len(texts) == 5 and all(len(r[3]) > 20 for r in texts)  # descriptions, truncated
    assert "server stopped" in first

    weights = out / "run" / "best.safetensors"
    trained_at = weights.stat().st_mtime_ns
    shutil.rmtree(out / "index-texts")  # one stage to redo; everything else is reused
    second = run_quickstart(tiny_data, out, shared_cache)
    assert weights.stat().st_mtime_ns == trained_at
    assert re.search(r"-> reused .*run", second)
    assert re.search(r"-> reused .*bundle", second)
    assert re.search(r"-> reused .*index-molecules", second)
    assert re.search(r"-> built .*index-texts", second)
    assert "not needed (the run is trained)" in second
    assert hit_rows(second, "molecule -> molecules: aspirin")[0][3] == ASPIRIN


def test_missing_data_says_where_to_get_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MOLRET_DATA"}
    for extra in ([], ["--data", str(tmp_path / "nowhere")]):
        out = subprocess.run(
            [sys.executable, "-m", "molret.cli", "quickstart", "--out", str(tmp_path / "o")]
            + extra,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert out.returncode == 2, out.stderr[-2000:]
        assert "blender-nlp/MolT5" in out.stderr and "MOLRET_DATA" in out.stderr
        assert "Traceback" not in out.stderr
        assert not (tmp_path / "o").exists()


def test_resident_memory_is_measured_and_grows_with_an_allocation() -> None:
    from molret.quickstart import resident_memory_gib

    rss, peak = resident_memory_gib()
    assert rss is not None and peak is not None and 0 < rss <= peak + 0.01
    block = b"\x01" * (300 * 2**20)  # written, so resident (calloc pages would not be)
    grown, grown_peak = resident_memory_gib()
    assert grown is not None and grown_peak is not None
    assert grown - rss > 0.25 and grown_peak >= peak
    del block
