"""`molret eval` on a training run: rebuild the towers, embed, rank both directions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from molret.data import Candidate, Pair, read_candidates, read_pairs
from molret.featurize import featurize_many

from .checkpoint import load_weights
from .config import load_config
from .embed import embed_cached_texts, embed_molecules, embed_texts_with_encoder
from .evaluate import cross_modal_metrics
from .loop import build_model
from .model import DualEncoder
from .text_cache import load_or_build
from .text_encoder import resolve_text_encoder

log = logging.getLogger(__name__)


def load_run(run_dir: Path) -> DualEncoder:
    """The model of a run with its best weights (the last ones if no epoch finished)."""
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run (no config.yaml)")
    config = load_config(run_dir / "config.yaml")
    model = build_model(config)
    for name in ("best.safetensors", "last.safetensors"):
        if (run_dir / name).is_file():
            if name == "last.safetensors":
                from safetensors.torch import load_file

                tensors = {
                    k[6:]: v
                    for k, v in load_file(str(run_dir / name)).items()
                    if k.startswith("model.")
                }
                model.load_state_dict(tensors, strict=False)
            else:
                load_weights(model, run_dir / name)
            return model.eval()
    raise FileNotFoundError(f"{run_dir} has no weights (best.safetensors or last.safetensors)")


def embed_texts(model: DualEncoder, texts: list[str], cache_dir: Path | None) -> np.ndarray:
    cfg = model.config
    if model.text_encoder is None:
        cache = load_or_build(
            texts, cfg.text_encoder, -1, cfg.text_max_length, cache_dir, show_progress=False
        )
        return embed_cached_texts(model, cache, list(range(len(texts))))
    encoder_dir = str(resolve_text_encoder(cfg.text_encoder))
    return embed_texts_with_encoder(model, encoder_dir, texts, cfg.text_max_length)


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


def evaluate_run(
    run_dir: Path, pairs_path: Path, candidates_path: Path | None, cache_dir: Path | None = None
) -> dict[str, Any]:
    if (run_dir / "manifest.json").is_file():
        raise ValueError(f"{run_dir} is a bundle: bundle evaluation comes with `molret export`")
    model = load_run(run_dir)
    pairs = read_pairs(pairs_path)
    candidates = read_candidates(candidates_path) if candidates_path else None
    pool, pool_texts = build_pools(pairs, candidates)
    graphs, errors = featurize_many([c.smiles for c in pool])
    for err in errors:
        log.warning("candidate %s left out: %s", pool[err.index].cid, err.reason)
    ok = [i for i, g in enumerate(graphs) if g is not None]
    row_of_cid = {pool[i].cid: r for r, i in enumerate(ok)}
    mol_pool = embed_molecules(model, [graphs[i] for i in ok])  # type: ignore[misc]
    text_pool_ok = [i for i, t in enumerate(pool_texts) if t.strip()]
    text_pool = embed_texts(model, [pool_texts[i] for i in text_pool_ok], cache_dir)
    text_row = {orig: r for r, orig in enumerate(text_pool_ok)}
    queries = [q for q, p in enumerate(pairs) if p.cid in row_of_cid]
    if len(queries) < len(pairs):
        log.warning(
            "%d queries left out: their molecule could not be featurized", len(pairs) - len(queries)
        )
    query_texts = embed_texts(model, [pairs[q].description for q in queries], cache_dir)
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
