"""Text2Mol-protocol evaluation of a model: both directions, every query against a whole pool."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from molret.evaluation import cross_modal_metrics

from .dataset import PairPool
from .embed import embed_cached_texts, embed_molecules
from .model import DualEncoder


class PoolEmbeddings:
    """Embeddings of every pair of the pool, computed once per model state."""

    def __init__(
        self,
        model: DualEncoder,
        pool: PairPool,
        batch_size: int = 128,
        positions: np.ndarray | None = None,
    ) -> None:
        ok = np.flatnonzero(pool.molecule_ok)
        if positions is not None:
            ok = ok[np.isin(ok, positions)]
        self.positions = ok
        self.row_of = {int(p): r for r, p in enumerate(ok)}
        graphs = [pool.graphs[i] for i in ok]
        self.molecules = embed_molecules(model, graphs, batch_size)  # type: ignore[arg-type]
        self.texts = embed_cached_texts(model, pool.texts, ok.tolist(), 2 * batch_size)

    def evaluate(self, queries: Sequence[int]) -> dict[str, object]:
        rows = np.array(
            [self.row_of[int(q)] for q in queries if int(q) in self.row_of], dtype=np.int64
        )
        return cross_modal_metrics(
            self.texts[rows], self.molecules[rows], self.molecules, self.texts, rows, rows
        )


def mean_mrr(result: dict[str, object]) -> float:
    """The model-selection score: MRR averaged over both directions."""
    t2m = result["text_to_molecule"]
    m2t = result["molecule_to_text"]
    return 0.5 * (float(t2m["mrr"]) + float(m2t["mrr"]))  # type: ignore[index]
