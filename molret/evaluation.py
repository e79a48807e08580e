"""`molret eval` for any model: pools, embeddings through a given embedder, both directions.

The protocol lives here, in the torch-free core, so that a training run (PyTorch) and a bundle
(ONNX Runtime) are evaluated by the same code and their numbers can be compared directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from molret.data import Candidate, Pair, read_candidates, read_pairs
from molret.featurize import MolGraph, featurize_many
from molret.metrics import retrieval_metrics

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """What evaluation needs from a model: float32 [n, d] rows, L2-normalised."""

    buckets: Sequence[tuple[int, int]] | None
    takes_keys: bool  # the molecule tower wants MACCS keys (featurize with keys=True)

    def embed_text_list(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_graphs(self, graphs: Sequence[MolGraph]) -> np.ndarray: ...


def cross_modal_metrics(
    text_queries: np.ndarray,
    mol_queries: np.ndarray,
    mol_pool: np.ndarray,
    text_pool: np.ndarray,
    mol_targets: np.ndarray,
    text_targets: np.ndarray,
) -> dict[str, Any]:
    """The `molret eval --json` object (hits and MRR as fractions)."""
    return {
        "text_to_molecule": retrieval_metrics(text_queries, mol_pool, mol_targets),
        "molecule_to_text": retrieval_metrics(mol_queries, text_pool, text_targets),
        "n_queries": int(len(text_queries)),
        "n_candidates": int(len(mol_pool)),
    }


def build_pools(
    pairs: list[Pair], candidates: list[Candidate] | None
) -> tuple[list[Candidate], list[str]]:
    """Molecule pool (candidates plus any query molecule missing, by CID) and text pool."""
    pool = list(candidates or [])
    known = {c.cid for c in pool}
    for pair in pairs:
        if pair.cid not in known:
            pool.append(Candidate(pair.cid, pair.smiles, pair.description))
            known.add(pair.cid)
    with_text = candidates is not None and any(c.description for c in candidates)
    texts = [c.description or "" for c in pool] if with_text else [p.description for p in pairs]
    return pool, texts


def evaluate_pairs(
    embedder: Embedder, pairs_path: Path, candidates_path: Path | None
) -> dict[str, Any]:
    """`molret eval` on files: PAIRS are the queries, CANDS (optional) the pool."""
    pairs = read_pairs(pairs_path)
    candidates = read_candidates(candidates_path) if candidates_path else None
    return evaluate(embedder, pairs, candidates)


def evaluate(
    embedder: Embedder, pairs: list[Pair], candidates: list[Candidate] | None
) -> dict[str, Any]:
    """Rank every query text against the molecule pool and every query molecule against texts.

    A candidate the featurizer (or the bundle's buckets) cannot take is left out of the pool
    with a warning, and so is a query whose own molecule was left out: its rank is undefined.
    """
    pool, pool_texts = build_pools(pairs, candidates)
    graphs, errors = featurize_many(
        [c.smiles for c in pool], buckets=embedder.buckets, keys=embedder.takes_keys
    )
    for err in errors:
        log.warning("candidate %s left out: %s", pool[err.index].cid, err.reason)
    ok = [i for i, g in enumerate(graphs) if g is not None]
    row_of_cid = {pool[i].cid: r for r, i in enumerate(ok)}
    mol_pool = embedder.embed_graphs([graphs[i] for i in ok])  # type: ignore[misc]
    text_pool_ok = [i for i, t in enumerate(pool_texts) if t.strip()]
    text_pool = embedder.embed_text_list([pool_texts[i] for i in text_pool_ok])
    text_row = {orig: r for r, orig in enumerate(text_pool_ok)}
    queries = [q for q, p in enumerate(pairs) if p.cid in row_of_cid]
    if len(queries) < len(pairs):
        log.warning(
            "%d queries left out: their molecule could not be featurized", len(pairs) - len(queries)
        )
    query_texts = embedder.embed_text_list([pairs[q].description for q in queries])
    mol_targets = np.array([row_of_cid[pairs[q].cid] for q in queries], dtype=np.int64)
    if candidates is not None and any(c.description for c in candidates):
        text_index = {c.cid: i for i, c in enumerate(pool)}
        text_targets = np.array(
            [text_row[text_index[pairs[q].cid]] for q in queries], dtype=np.int64
        )
    else:
        text_targets = np.array([text_row[q] for q in queries], dtype=np.int64)
    return cross_modal_metrics(
        query_texts, mol_pool[mol_targets], mol_pool, text_pool, mol_targets, text_targets
    )
