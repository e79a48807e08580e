"""End-to-end training on the tiny fixture: resume after a kill, determinism, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.yaml"


def run_train(
    data: Path, out: Path, cache: Path, *extra: str, torchrun: int = 0, config: Path = SMOKE
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MOLRET_CACHE": str(cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = [
        "-m",
        "molret.cli",
        "train",
        "--config",
        str(config),
        "--data",
        str(data),
        "--out",
        str(out),
        *extra,
    ]
    if torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={torchrun}",
            *args,
        ]
    else:
        cmd = [sys.executable, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def weights(run: Path, name: str = "last.safetensors") -> dict[str, torch.Tensor]:
    tensors = load_file(str(run / name))
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def initial_weights() -> dict[str, torch.Tensor]:
    """The smoke model as the trainer initialises it (same seed, same construction order)."""
    from molret.trainer.config import load_config
    from molret.trainer.loop import build_model

    config = load_config(SMOKE)
    torch.manual_seed(config.optim.seed)
    model = build_model(config)
    return {f"model.{k}": v for k, v in model.state_dict().items()}


def test_train_writes_run_and_metrics(tiny_data: Path, tmp_path: Path, shared_cache: Path) -> None:
    run = tmp_path / "run"
    run_train(tiny_data, run, shared_cache)
    for name in (
        "config.yaml",
        "run.json",
        "best.safetensors",
        "last.safetensors",
        "metrics.jsonl",
        "eval.json",
    ):
        assert (run / name).is_file(), name
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1]
    result = json.loads((run / "eval.json").read_text())
    for split in ("holdout", "select", "validation"):
        for direction in ("text_to_molecule", "molecule_to_text"):
            m = result[split][direction]
            assert 0.0 <= m["hits@1"] <= m["hits@10"] <= 1.0
            assert 1.0 <= m["mean_rank"] <= result[split]["n_candidates"]
        assert result[split]["n_candidates"] == 33


def test_same_seed_same_weights(tiny_data: Path, tmp_path: Path, shared_cache: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run_train(tiny_data, a, shared_cache, "--max-steps", "3")
    run_train(tiny_data, b, shared_cache, "--max-steps", "3")
    run_train(tiny_data, c, shared_cache, "--max-steps", "3", "--seed", "7")
    wa, wb, wc = weights(a), weights(b), weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_bf16_autocast_trains_float32_weights_deterministically(
    tiny_data: Path, tmp_path: Path, shared_cache: Path
) -> None:
    """optim.precision=bf16 really changes the arithmetic (weights differ from fp32 training),
    keeps float32 master weights, and is as deterministic as fp32."""
    bf16_config = tmp_path / "smoke-bf16.yaml"
    bf16_config.write_text(SMOKE.read_text().replace("optim:\n", "optim:\n  precision: bf16\n"))
    fp32, a, b = tmp_path / "fp32", tmp_path / "a", tmp_path / "b"
    run_train(tiny_data, fp32, shared_cache, "--max-steps", "3")
    run_train(tiny_data, a, shared_cache, "--max-steps", "3", config=bf16_config)
    run_train(tiny_data, b, shared_cache, "--max-steps", "3", config=bf16_config)
    w32, wa, wb, w0 = weights(fp32), weights(a), weights(b), initial_weights()
    floats = [k for k in wa if wa[k].is_floating_point()]
    assert floats and all(wa[k].dtype == torch.float32 for k in floats)  # no bf16 copies saved
    assert all(torch.isfinite(wa[k]).all() for k in floats)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    moved = max(float((wa[k] - w0[k]).abs().max()) for k in wa)
    assert moved > 1e-3, "bf16 training did not move the weights"
    assert any(not torch.equal(wa[k], w32[k]) for k in wa), "bf16 gave the fp32 result"


def test_resume_after_kill_matches_uninterrupted(
    tiny_data: Path, tmp_path: Path, shared_cache: Path
) -> None:
    """Stop after 4 steps (mid-epoch 1), then resume to 6: same weights as 6 straight steps."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_train(tiny_data, straight, shared_cache, "--max-steps", "6")
    run_train(tiny_data, resumed, shared_cache, "--max-steps", "4")
    state = json.loads((resumed / "metrics.jsonl").read_text().splitlines()[-1])
    assert state["global_step"] == 3  # epoch 0 finished; the stop came inside epoch 1
    run_train(tiny_data, resumed, shared_cache, "--max-steps", "6")
    ws, wr = weights(straight), weights(resumed)
    for key in ws:
        torch.testing.assert_close(wr[key], ws[key], rtol=0, atol=1e-6, msg=key)
    lines_s = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    lines_r = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines_r] == [x["epoch"] for x in lines_s]


@pytest.mark.slow
def test_torchrun_two_processes_equal_single_process(
    tiny_data: Path, tmp_path: Path, shared_cache: Path
) -> None:
    """2 gloo processes x 4 pairs == 1 process x 8 pairs: the losses see the global batch."""
    single, double = tmp_path / "single", tmp_path / "double"
    run_train(tiny_data, single, shared_cache, "--max-steps", "3")
    run_train(tiny_data, double, shared_cache, "--max-steps", "3", torchrun=2)
    w1, w2, w0 = weights(single), weights(double), initial_weights()
    moved = max(float((w1[k] - w0[k]).abs().max()) for k in w1)
    assert moved > 1e-3, "training did not move the weights: the comparison would be vacuous"
    # Float summation order differs (each process packs 4 molecules instead of 8); Adam turns
    # the noise of a gradient that is numerically ~0 into a step of about lr, so a rare element
    # may differ by up to one step (lr = 1e-4). Everything else must agree to 2e-5.
    total = close = 0
    for key in w1:
        diff = (w2[key].float() - w1[key].float()).abs()
        assert float(diff.max()) <= 1.5e-4, key
        total += diff.numel()
        close += int((diff <= 2e-5 + 1e-4 * w1[key].float().abs()).sum())
    assert close >= 0.999 * total, f"{total - close} of {total} weights differ by more than 2e-5"
    loss1 = json.loads((single / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
    loss2 = json.loads((double / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
    assert loss2 == pytest.approx(loss1, rel=1e-4)


def test_sigkill_then_resume_matches_uninterrupted(
    tiny_data: Path, tmp_path: Path, shared_cache: Path
) -> None:
    """A real kill -9 while training, then a rerun: same final weights as a run never killed."""
    import signal
    import time

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_train(tiny_data, straight, shared_cache, "--epochs", "6")
    env = {**os.environ, "MOLRET_CACHE": str(shared_cache), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "molret.cli", "train", "--config", str(SMOKE), "--data", str(tiny_data),
           "--out", str(killed), "--epochs", "6"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / "last.safetensors").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    run_train(tiny_data, killed, shared_cache, "--epochs", "6")
    ws, wk = weights(straight), weights(killed)
    for key in ws:
        torch.testing.assert_close(wk[key], ws[key], rtol=0, atol=1e-6, msg=key)
