"""benchmarks/latency.py in its small size: real servers (batching on and off) in subprocesses
on the tiny bundle, a small index of tests/data/tiny_library.smi, one second per level. Checks the
JSON contract and sanity, never speed."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LEVEL_KEYS = {"qps", "p50_ms", "p95_ms", "p99_ms", "p999_ms", "errors"}


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "latency_benchmark", REPO / "benchmarks" / "latency.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_index(smoke_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from molret.engine.index_build import build_index

    out = tmp_path_factory.mktemp("latency") / "index"
    library = REPO / "tests" / "data" / "tiny_library.smi"
    report = build_index(smoke_bundle, library, out, progress=False)
    assert report.accepted > 0
    return out


def test_small_sweep_writes_the_contract(
    smoke_bundle: Path, tiny_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MOLRET_DATA", raising=False)  # the built-in queries: no data needed
    benchmark = load_benchmark()
    out, png = tmp_path / "latency.json", tmp_path / "latency.png"
    code = benchmark.main(
        [
            "--bundle", str(smoke_bundle), "--index", str(tiny_index),
            "--concurrency", "1,4", "--duration", "1", "--warmup", "0.3", "--rates", "20",
            "--threads", "1", "--json", str(out), "--plot", str(png),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())

    meta = report["meta"]
    assert meta["index_size"] > 0 and meta["bundle_id"] and meta["date"]
    assert meta["machine"]["logical_cpus"] == os.cpu_count()
    assert set(report["results"]) == {"text", "molecule"}
    for workload, sections in report["results"].items():
        for mode in ("batching_on", "batching_off"):
            levels = sections[mode]["concurrency"]
            assert set(levels) == {"1", "4"}, (workload, mode)
            for stats in levels.values():
                assert set(stats) >= LEVEL_KEYS
                assert stats["qps"] > 0
                assert stats["errors"] == 0
                assert stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= stats["p999_ms"]
                assert stats["client_cpu"] is not None
                parts = stats["server_ms"]["all"]
                assert parts["inference"] > 0 and parts["server_total"] > 0
                # The server's parts fit inside its total, its total inside the client's time.
                assert parts["unaccounted"] >= 0 and parts["outside_server"] >= 0
                assert parts["server_total"] <= stats["mean_ms"]
                assert stats["server_ms"]["slowest_1pct"]["server_total"] >= 0
        open_loop = sections["batching_on"]["rates"]["20"]
        assert set(open_loop) >= LEVEL_KEYS and open_loop["errors"] == 0
        assert open_loop["n"] > 0 and open_loop["p50_ms"] <= open_loop["p99_ms"]
        assert set(sections["qps_ratio_on_off"]) == {"1", "4"}
        assert all(ratio > 0 for ratio in sections["qps_ratio_on_off"].values())
    names = [t["name"] for t in report["targets"]]
    assert any("p99 at concurrency 1" in n for n in names)
    assert all(t["met"] in (True, False, None) for t in report["targets"])
    assert png.is_file() and png.stat().st_size > 1000


def test_against_a_running_server_with_naive_baseline(
    smoke_bundle: Path, smoke_run: Path, tiny_index: Path, tmp_path: Path
) -> None:
    from molret.engine.server import start_server_thread

    benchmark = load_benchmark()
    out = tmp_path / "latency.json"
    with start_server_thread(
        bundle_dir=smoke_bundle, index_dir=tiny_index, port=0, threads=1
    ) as server:
        code = benchmark.main(
            [
                "--server", server.target, "--index", str(tiny_index), "--run", str(smoke_run),
                "--workload", "molecule", "--concurrency", "2", "--duration", "0.5",
                "--warmup", "0.2", "--threads", "1", "--json", str(out),
            ]
        )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    stats = report["results"]["molecule"]["batching_on"]["concurrency"]["2"]
    assert stats["qps"] > 0 and stats["errors"] == 0
    naive = report["naive_baseline"]["molecule"]
    assert naive["qps"] > 0 and naive["p50_ms"] <= naive["p99_ms"]
