"""Retrieval metrics (hits@k, MRR, mean rank) for text <-> molecule evaluation.

Ranks are computed chunk by chunk over the queries because the standard ChEBI-20 evaluation
(3,300 queries against 33,010 candidates) would need ~440 MB as a dense float32 score matrix,
and library-scale evaluations far more. Only numpy is used so the serving install can report
the same numbers as the trainer.

Ties are counted pessimistically: an item tied with the true candidate is ranked above it.
Otherwise a collapsed model that maps everything to one vector would score a perfect hits@1.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np

__all__ = [
    "ranks_from_similarity",
    "retrieval_metrics",
    "retrieval_ranks",
    "summarize_ranks",
]


def _as_matrix(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {array.shape}")
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    return array


def _as_targets(targets: np.ndarray, n_queries: int, n_candidates: int) -> np.ndarray:
    array = np.asarray(targets)
    if array.ndim != 1 or array.shape[0] != n_queries:
        raise ValueError(
            f"targets must have shape ({n_queries},) (one per query), got {array.shape}"
        )
    if array.dtype.kind not in "iu":
        # Floats or bools here almost always mean a wrong column was passed in.
        raise ValueError(f"targets must be integer candidate indices, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= n_candidates):
        # Negative indices are refused rather than wrapped: they are a bug, not a convention.
        raise ValueError(
            f"targets must lie in [0, {n_candidates}) (the candidate rows), "
            f"got values from {array.min()} to {array.max()}"
        )
    return array.astype(np.int64, copy=False)


def _normalized_float32(name: str, values: np.ndarray) -> np.ndarray:
    """L2-normalise a float32 copy, so callers' arrays are never modified in place."""
    out = np.array(values, dtype=np.float32)
    if not np.isfinite(out).all():
        # NaN scores compare false with everything and would silently rank as 1.
        raise ValueError(f"{name} contain NaN or infinite values (after conversion to float32)")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    # A zero vector stays zero: it scores 0 against everything, so it ties (pessimistically)
    # with every candidate instead of producing NaNs.
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def _unique_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Collapse bitwise-identical rows.

    Identical candidates must tie exactly, but BLAS may use different kernels (and so a
    different rounding) for different columns of one product. Scoring each distinct vector
    once and copying the score to its twins makes the tie exact by construction.
    Returns the unique rows and, when any row was a duplicate, the map from each original row
    to its unique row.
    """
    if values.shape[0] < 2:
        return values, None
    contiguous = np.ascontiguousarray(values)
    row_bytes = np.dtype((np.void, contiguous.dtype.itemsize * contiguous.shape[1]))
    keys = contiguous.view(row_bytes).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    if first.size == values.shape[0]:
        return values, None
    return contiguous[first], inverse.reshape(-1)


def _pessimistic_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rank = number of candidates scoring >= the true one (the true one included).

    The true score is read from the same row it is compared with, so the true candidate always
    ties with itself exactly, whatever arithmetic produced the row.
    """
    true_scores = scores[np.arange(scores.shape[0]), targets]
    return np.count_nonzero(scores >= true_scores[:, None], axis=1).astype(np.int64)


def ranks_from_similarity(similarity: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based pessimistic ranks of each query's true candidate in a precomputed [Q, C] matrix.

    For small evaluations and tests; large ones should use `retrieval_ranks`, which never
    holds the whole matrix.
    """
    scores = _as_matrix("similarity", similarity)
    target_idx = _as_targets(targets, scores.shape[0], scores.shape[1])
    if scores.dtype.kind == "f" and np.isnan(scores).any():
        raise ValueError("similarity contains NaN values")
    return _pessimistic_ranks(scores, target_idx)


def retrieval_ranks(
    queries: np.ndarray,
    candidates: np.ndarray,
    targets: np.ndarray,
    chunk_size: int = 256,
) -> np.ndarray:
    """1-based pessimistic rank of each query's true candidate under cosine similarity.

    Works on `chunk_size` queries at a time, so the score buffers take at most about
    `chunk_size * n_candidates * 9` bytes whatever the number of queries.
    """
    query_matrix = _as_matrix("queries", queries)
    candidate_matrix = _as_matrix("candidates", candidates)
    if query_matrix.shape[1] != candidate_matrix.shape[1]:
        raise ValueError(
            "queries and candidates must have the same embedding width, got "
            f"{query_matrix.shape[1]} and {candidate_matrix.shape[1]}"
        )
    if query_matrix.shape[1] == 0:
        raise ValueError("embeddings must have at least one dimension")
    chunk = operator.index(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk}")
    target_idx = _as_targets(targets, query_matrix.shape[0], candidate_matrix.shape[0])

    query_unit = _normalized_float32("queries", query_matrix)
    distinct, row_to_distinct = _unique_rows(np.asarray(candidate_matrix, dtype=np.float32))
    distinct_unit = _normalized_float32("candidates", distinct)
    distinct_unit_t = np.ascontiguousarray(distinct_unit.T)

    ranks = np.empty(query_matrix.shape[0], dtype=np.int64)
    for start in range(0, query_matrix.shape[0], chunk):
        stop = min(start + chunk, query_matrix.shape[0])
        scores = query_unit[start:stop] @ distinct_unit_t
        if row_to_distinct is not None:
            # Expand back to one column per candidate so every twin is counted.
            scores = scores[:, row_to_distinct]
        ranks[start:stop] = _pessimistic_ranks(scores, target_idx[start:stop])
    return ranks


def summarize_ranks(ranks: np.ndarray, ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """Hits@k and MRR as fractions in [0, 1], plus mean rank, as plain floats.

    Plain floats (not numpy scalars) so the result can go straight into JSON or a logger.
    """
    values = np.asarray(ranks)
    if values.ndim != 1:
        raise ValueError(f"ranks must be a 1-D array, got shape {values.shape}")
    if values.size == 0:
        raise ValueError("cannot summarise an empty set of ranks")
    if values.dtype.kind not in "iuf":
        raise ValueError(f"ranks must be numbers, got dtype {values.dtype}")
    if not (values >= 1).all():
        raise ValueError("ranks are 1-based and must all be >= 1 (and not NaN)")
    cutoffs = [operator.index(k) for k in ks]
    if any(k < 1 for k in cutoffs):
        raise ValueError(f"every k in ks must be >= 1, got {list(cutoffs)}")

    as_float = values.astype(np.float64)
    summary = {f"hits@{k}": float(np.mean(as_float <= k)) for k in cutoffs}
    summary["mrr"] = float(np.mean(1.0 / as_float))
    summary["mean_rank"] = float(np.mean(as_float))
    return summary


def retrieval_metrics(
    queries: np.ndarray,
    candidates: np.ndarray,
    targets: np.ndarray,
    chunk_size: int = 256,
    ks: Sequence[int] = (1, 10),
) -> dict[str, float]:
    """`retrieval_ranks` followed by `summarize_ranks`, the usual one-call evaluation."""
    return summarize_ranks(retrieval_ranks(queries, candidates, targets, chunk_size), ks)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` with the same row of ``b`` (parity checks between backends)."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)
