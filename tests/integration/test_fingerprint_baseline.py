"""The fingerprint baseline benchmark end to end on the hand-written tiny pairs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "data" / "tiny_pairs.tsv"
N_TRAIN = 24


def _load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "fingerprint_baseline", REPO / "benchmarks" / "fingerprint_baseline.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


fb = _load_benchmark()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """(data dir with train.txt 24 / validation.txt 9, its own text cache, pool size)."""
    lines = TINY.read_text().splitlines()
    header, rows = lines[0], [line for line in lines[1:] if line.strip()]
    data = tmp_path_factory.mktemp("tiny-chebi")
    (data / "train.txt").write_text("\n".join([header, *rows[:N_TRAIN]]) + "\n")
    (data / "validation.txt").write_text("\n".join([header, *rows[N_TRAIN:]]) + "\n")
    return data, tmp_path_factory.mktemp("molret-cache"), len(rows)


def _check_metrics(metrics: dict[str, float], n_pool: int) -> None:
    assert set(metrics) == {"hits@1", "hits@10", "mrr", "mean_rank"}
    for key in ("hits@1", "hits@10", "mrr"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["hits@1"] <= metrics["hits@10"]
    assert 1.0 <= metrics["mean_rank"] <= n_pool


def test_features(tiny: tuple[Path, Path, int]) -> None:
    data, cache, n_pool = tiny
    prepared = fb.prepare(data, cache)
    assert prepared.text_feats.shape == (n_pool, 384)
    assert prepared.mol_feats.shape == (n_pool, fb.MOLECULE_DIM)
    np.testing.assert_allclose(np.linalg.norm(prepared.text_feats, axis=1), 1.0, rtol=1e-5)
    # log1p counts are non-negative, MACCS keys are bits; every fixture SMILES parses
    assert (prepared.mol_feats >= 0).all()
    assert set(np.unique(prepared.mol_feats[:, fb.MORGAN_BITS :])) <= {0.0, 1.0}
    assert (prepared.mol_feats.sum(axis=1) > 0).all()
    # the cache went to the given folder, not to $MOLRET_CACHE or ~/.cache
    assert list((cache / "text-states").glob("*/meta.json"))


@pytest.mark.parametrize("mode", fb.MODES)
def test_run_structure_and_loss_drops(tiny: tuple[Path, Path, int], mode: str) -> None:
    data, cache, n_pool = tiny
    torch.set_num_threads(1)
    result = fb.run(data, cache, mode, epochs=8, dim=32, mol_hidden=64, batch_size=64, seed=0)
    json.dumps(result)  # JSON-ready as it is

    assert result["mode"] == mode
    assert result["n_pool"] == n_pool
    assert result["n_train"] == N_TRAIN
    n_val = n_pool - N_TRAIN
    if mode == "validation":
        assert result["n_selection"] == result["n_report"] == n_val
    else:
        assert result["n_selection"] + result["n_report"] == n_val
        assert result["n_selection"] > 0 and result["n_report"] > 0
    for key in ("text_to_molecule", "molecule_to_text", "text_to_molecule_optimistic_ties"):
        _check_metrics(result[key], n_pool)
    pessimistic, optimistic = result["text_to_molecule"], result["text_to_molecule_optimistic_ties"]
    assert optimistic["mrr"] >= pessimistic["mrr"]
    assert optimistic["mean_rank"] <= pessimistic["mean_rank"]

    history = result["history"]
    assert [h["epoch"] for h in history] == list(range(1, 9))
    assert 1 <= result["chosen_epoch"] <= 8
    assert result["selection_mrr"] == max(h["selection_mrr"] for h in history)
    assert history[-1]["loss"] < history[0]["loss"]
    assert result["seconds"] > 0


def test_same_seed_same_result(tiny: tuple[Path, Path, int]) -> None:
    data, cache, _ = tiny
    prepared = fb.prepare(data, cache)
    kwargs = dict(prepared=prepared, epochs=3, dim=16, mol_hidden=0, batch_size=64)
    a = fb.run(data, cache, "validation", seed=1, **kwargs)
    b = fb.run(data, cache, "validation", seed=1, **kwargs)
    assert a["history"] == b["history"]
    assert a["text_to_molecule"] == b["text_to_molecule"]


def test_optimistic_ties_only_differ_on_ties() -> None:
    candidates = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    targets = np.array([1, 2, 3])
    optimistic = fb.optimistic_tie_metrics(queries, candidates, targets)
    pessimistic = fb.evaluate(queries, candidates, targets)
    # query 0 ties with its target's twin: rank 1 optimistic, 2 pessimistic; no other ties
    assert optimistic["mean_rank"] == pytest.approx((1 + 1 + 2) / 3)
    assert pessimistic["mean_rank"] == pytest.approx((2 + 1 + 2) / 3)


def test_rejects_unknown_mode(tiny: tuple[Path, Path, int]) -> None:
    data, cache, _ = tiny
    with pytest.raises(ValueError, match="selection"):
        fb.run(data, cache, "test")


def test_feature_set_ablation_zeroes_only_the_other_fingerprint(
    tiny: tuple[Path, Path, int],
) -> None:
    data, cache, _ = tiny
    prepared = fb.prepare(data, cache)
    morgan = fb.only_feature_set(prepared, "morgan").mol_feats
    maccs = fb.only_feature_set(prepared, "maccs").mol_feats
    split = fb.MORGAN_BITS
    assert not morgan[:, split:].any() and not maccs[:, :split].any()
    np.testing.assert_array_equal(morgan[:, :split], prepared.mol_feats[:, :split])
    np.testing.assert_array_equal(maccs[:, split:], prepared.mol_feats[:, split:])
    assert prepared.mol_feats[:, split:].any()  # the original is untouched
    with pytest.raises(ValueError, match="feature set"):
        fb.only_feature_set(prepared, "ecfp")
