"""The `molret` command as other tools call it: exit codes, messages and the eval JSON contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def molret(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "molret.cli", *args],
        capture_output=True, text=True, env=full_env, timeout=600,
    )  # fmt: skip


def test_help_lists_commands() -> None:
    out = molret("--help")
    assert out.returncode == 0
    for command in ("train", "eval"):
        assert command in out.stdout


def test_core_imports_without_torch() -> None:
    """The serving core must not pull torch in (a serving install has none)."""
    code = (
        "import sys, molret, molret.featurize, molret.text, molret.data, molret.metrics, molret.cli;"
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_train_without_data_says_where_to_point(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MOLRET_DATA"}
    out = subprocess.run(
        [sys.executable, "-m", "molret.cli", "train", "--config", str(REPO / "configs" / "smoke.yaml"),
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0
    assert "MOLRET_DATA" in out.stderr
    assert "Traceback" not in out.stderr


def test_eval_json_contract(tiny_data: Path, tmp_path: Path, shared_cache: Path) -> None:
    env = {"MOLRET_CACHE": str(shared_cache)}
    run = tmp_path / "run"
    trained = molret("train", "--config", str(REPO / "configs" / "smoke.yaml"), "--data", str(tiny_data),
                     "--out", str(run), env=env)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    pairs = tiny_data / "validation.txt"
    cands = tiny_data / "train.txt"
    out = molret(
        "eval",
        "--model",
        str(run),
        "--pairs",
        str(pairs),
        "--candidates",
        str(cands),
        "--json",
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)  # exactly one JSON object on stdout
    assert set(result) == {"text_to_molecule", "molecule_to_text", "n_queries", "n_candidates"}
    assert result["n_queries"] == 9
    assert result["n_candidates"] == 33  # 24 candidates + the 9 query molecules added
    for direction in ("text_to_molecule", "molecule_to_text"):
        m = result[direction]
        assert set(m) == {"hits@1", "hits@10", "mrr", "mean_rank"}
        assert 0.0 <= m["hits@1"] <= m["hits@10"] <= 1.0 and 0.0 < m["mrr"] <= 1.0


def test_eval_rejects_unknown_model_dir(tmp_path: Path) -> None:
    pairs = REPO / "tests" / "data" / "tiny_pairs.tsv"
    out = molret("eval", "--model", str(tmp_path), "--pairs", str(pairs), "--json")
    assert out.returncode != 0
    assert "not a training run" in out.stderr


@pytest.mark.parametrize("bad", ["optim:\n  lr: 1e-4\n", "optim:\n  learning_rate: 0.1\n"])
def test_bad_config_is_refused_with_reason(tmp_path: Path, tiny_data: Path, bad: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(bad)
    out = molret(
        "train", "--config", str(cfg), "--data", str(tiny_data), "--out", str(tmp_path / "r")
    )
    assert out.returncode != 0
    assert "optim." in out.stderr or "optim" in out.stderr
