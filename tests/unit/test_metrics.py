"""Tests for molret.metrics against a deliberately naive reference implementation."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from molret.metrics import (
    ranks_from_similarity,
    retrieval_metrics,
    retrieval_ranks,
    summarize_ranks,
)


def _reference_ranks(queries: np.ndarray, candidates: np.ndarray, targets: np.ndarray) -> list[int]:
    """Cosine similarity and pessimistic ranks with Python floats and plain loops, nothing shared
    with the implementation under test."""

    def unit(vector: np.ndarray) -> list[float]:
        values = [float(v) for v in vector]
        norm = math.sqrt(sum(v * v for v in values))
        return [v / norm for v in values] if norm > 0 else values

    unit_candidates = [unit(c) for c in candidates]
    ranks = []
    for query, target in zip(queries, targets, strict=True):
        q = unit(query)
        scores = [sum(a * b for a, b in zip(q, c, strict=True)) for c in unit_candidates]
        true_score = scores[int(target)]
        above = sum(1 for j, s in enumerate(scores) if s > true_score)
        tied_others = sum(1 for j, s in enumerate(scores) if s == true_score and j != target)
        ranks.append(1 + above + tied_others)
    return ranks


def _tied_random_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random vectors with duplicated candidates, and queries whose true candidate has a twin."""
    rng = np.random.default_rng(seed)
    candidates = rng.normal(size=(40, 12))
    candidates[5] = candidates[3]  # a duplicated pair that is nobody's target
    candidates[17] = candidates[9]  # the true candidate of some queries has a twin ...
    candidates[30] = candidates[9]  # ... two twins, in fact
    targets = rng.integers(0, 40, size=25)
    targets[:4] = [9, 17, 30, 3]
    # Queries close to their target so that ranks are spread out, not all near C / 2.
    queries = candidates[targets] + rng.normal(scale=0.8, size=(25, 12))
    queries[4] = candidates[targets[4]]  # a query identical to its target
    return queries, candidates, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranks_match_bruteforce_reference_with_ties(seed: int) -> None:
    queries, candidates, targets = _tied_random_case(seed)
    expected = _reference_ranks(queries, candidates, targets)
    ranks = retrieval_ranks(queries, candidates, targets)
    assert ranks.dtype == np.int64
    assert ranks.tolist() == expected


def test_exact_lattice_vectors_with_many_ties() -> None:
    # Entries in {-1, 0, 1} with exactly four non-zeros normalise to +-0.5 exactly, so every
    # score is an exact multiple of 0.25 in any summation order: lots of genuine ties and no
    # rounding doubt between the reference and the BLAS product.
    rng = np.random.default_rng(7)

    def lattice(n: int) -> np.ndarray:
        out = np.zeros((n, 8))
        for row in out:
            row[rng.choice(8, size=4, replace=False)] = rng.choice([-1.0, 1.0], size=4)
        return out

    candidates, queries = lattice(60), lattice(30)
    targets = rng.integers(0, 60, size=30)
    expected = _reference_ranks(queries, candidates, targets)
    assert len(set(expected)) > 3  # the case really exercises ties at several levels
    for chunk_size in (1, 7, 1000):
        assert retrieval_ranks(queries, candidates, targets, chunk_size).tolist() == expected


def test_true_item_ranks_below_its_identical_twin() -> None:
    a, b = [1.0, 0.0], [0.0, 1.0]
    candidates = np.array([a, b, a])
    queries = np.array([a, a, b])
    # Both copies of `a` tie at the top: whichever one is the target, it is ranked second.
    assert retrieval_ranks(queries, candidates, np.array([0, 2, 1])).tolist() == [2, 2, 1]


def test_chunk_size_does_not_change_ranks() -> None:
    queries, candidates, targets = _tied_random_case(3)
    baseline = retrieval_ranks(queries, candidates, targets, chunk_size=len(queries) + 10)
    for chunk_size in (1, 7, len(queries)):
        assert np.array_equal(retrieval_ranks(queries, candidates, targets, chunk_size), baseline)


def test_scale_and_dtype_do_not_matter() -> None:
    queries, candidates, targets = _tied_random_case(4)
    baseline = retrieval_ranks(queries, candidates, targets)
    scaled = retrieval_ranks(queries * 3.0, candidates.astype(np.float32) * 0.5, targets)
    assert np.array_equal(scaled, baseline)


def test_inputs_are_not_modified() -> None:
    queries, candidates, targets = _tied_random_case(5)
    q_copy, c_copy = queries.copy(), candidates.copy()
    retrieval_ranks(queries, candidates, targets)
    assert np.array_equal(queries, q_copy) and np.array_equal(candidates, c_copy)


def test_zero_query_ties_with_everything() -> None:
    candidates = np.eye(4)
    queries = np.zeros((1, 4))
    assert retrieval_ranks(queries, candidates, np.array([2])).tolist() == [4]


def test_ranks_from_similarity_is_pessimistic() -> None:
    similarity = np.array(
        [
            [0.9, 0.1, 0.9, 0.5],  # target 0 tied with column 2 -> 2
            [0.2, 0.8, 0.8, 0.8],  # target 3 tied with two others -> 3
            [0.3, 0.7, 0.1, 0.9],  # target 2, strictly last -> 4
            [0.3, 0.7, 0.1, 0.9],  # target 3, strictly first -> 1
        ]
    )
    ranks = ranks_from_similarity(similarity, np.array([0, 3, 2, 3]))
    assert ranks.dtype == np.int64
    assert ranks.tolist() == [2, 3, 4, 1]


def test_ranks_from_similarity_agrees_with_retrieval_ranks() -> None:
    queries, candidates, targets = _tied_random_case(6)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    c = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)
    assert ranks_from_similarity(q @ c.T, targets).tolist() == _reference_ranks(
        queries, candidates, targets
    )


def test_summary_on_hand_case() -> None:
    summary = summarize_ranks(np.array([1, 2, 10, 11]))
    assert list(summary) == ["hits@1", "hits@10", "mrr", "mean_rank"]
    assert summary["hits@1"] == pytest.approx(0.25)
    assert summary["hits@10"] == pytest.approx(0.75)
    assert summary["mrr"] == pytest.approx((1 + 0.5 + 0.1 + 1 / 11) / 4)
    assert summary["mean_rank"] == pytest.approx(6.0)
    assert all(type(value) is float for value in summary.values())


def test_summary_custom_ks() -> None:
    summary = summarize_ranks([1, 2, 10, 11], ks=(2, 5, 100))
    assert summary["hits@2"] == 0.5 and summary["hits@5"] == 0.5 and summary["hits@100"] == 1.0
    assert "hits@1" not in summary


def test_retrieval_metrics_is_ranks_then_summary() -> None:
    queries, candidates, targets = _tied_random_case(8)
    expected = summarize_ranks(retrieval_ranks(queries, candidates, targets), ks=(1, 5))
    assert retrieval_metrics(queries, candidates, targets, chunk_size=3, ks=(1, 5)) == expected


def test_perfect_retrieval() -> None:
    candidates = np.eye(5)
    summary = retrieval_metrics(candidates, candidates, np.arange(5))
    assert summary == {"hits@1": 1.0, "hits@10": 1.0, "mrr": 1.0, "mean_rank": 1.0}


def test_memory_stays_bounded_by_chunk() -> None:
    rng = np.random.default_rng(9)
    queries = rng.normal(size=(400, 8)).astype(np.float32)
    candidates = rng.normal(size=(5000, 8)).astype(np.float32)
    targets = rng.integers(0, 5000, size=400)
    full_matrix_bytes = 400 * 5000 * 4
    tracemalloc.start()
    try:
        retrieval_ranks(queries, candidates, targets, chunk_size=16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < full_matrix_bytes / 4


@pytest.mark.parametrize(
    ("queries", "candidates", "targets", "message"),
    [
        (np.ones(3), np.ones((2, 3)), np.array([0]), "queries must be a 2-D"),
        (np.ones((1, 3)), np.ones((2, 4)), np.array([0]), "same embedding width"),
        (np.ones((2, 3)), np.ones((2, 3)), np.array([0]), r"targets must have shape \(2,\)"),
        (np.ones((1, 3)), np.ones((2, 3)), np.array([2]), r"\[0, 2\)"),
        (np.ones((1, 3)), np.ones((2, 3)), np.array([-1]), r"\[0, 2\)"),
        (np.ones((1, 3)), np.ones((2, 3)), np.array([0.0]), "integer"),
        (np.full((1, 3), np.nan), np.ones((2, 3)), np.array([0]), "NaN"),
        (np.ones((1, 0)), np.ones((2, 0)), np.array([0]), "at least one dimension"),
    ],
)
def test_retrieval_ranks_rejects_bad_input(
    queries: np.ndarray, candidates: np.ndarray, targets: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        retrieval_ranks(queries, candidates, targets)


def test_bad_chunk_size_and_similarity() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_ranks(np.ones((1, 2)), np.ones((1, 2)), np.array([0]), chunk_size=0)
    with pytest.raises(ValueError, match="2-D"):
        ranks_from_similarity(np.ones(3), np.array([0]))
    with pytest.raises(ValueError, match="targets"):
        ranks_from_similarity(np.ones((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="NaN"):
        ranks_from_similarity(np.array([[np.nan, 1.0]]), np.array([0]))


def test_summary_rejects_bad_ranks() -> None:
    with pytest.raises(ValueError, match="empty"):
        summarize_ranks(np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match=">= 1"):
        summarize_ranks(np.array([0, 1]))
    with pytest.raises(ValueError, match="1-D"):
        summarize_ranks(np.ones((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="ks"):
        summarize_ranks(np.array([1]), ks=(0,))


def test_empty_query_set_gives_empty_ranks() -> None:
    ranks = retrieval_ranks(np.ones((0, 3)), np.ones((2, 3)), np.array([], dtype=np.int64))
    assert ranks.shape == (0,) and ranks.dtype == np.int64
