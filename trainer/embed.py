"""Batch embedding with the PyTorch model, for evaluation and as the export parity reference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from molret.graphs import MolGraph
from molret.text import encode, load_tokenizer

from .model import DualEncoder, PackedGraphs
from .text_cache import TokenStateCache


def _size_sorted_batches(sizes: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Similar sizes together, so padding wastes little compute."""
    order = np.argsort(np.asarray(sizes), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def embed_molecules(
    model: DualEncoder, graphs: Sequence[MolGraph], batch_size: int = 128
) -> np.ndarray:
    model.eval()
    out = np.zeros((len(graphs), model.config.embed_dim), dtype=np.float32)
    for idx in _size_sorted_batches([g.n_atoms for g in graphs], batch_size):
        batch = PackedGraphs.from_graphs([graphs[i] for i in idx])
        out[idx] = model.encode_molecule(batch).embedding.numpy()
    return out


@torch.no_grad()
def embed_cached_texts(
    model: DualEncoder, cache: TokenStateCache, positions: Sequence[int], batch_size: int = 256
) -> np.ndarray:
    model.eval()
    positions = np.asarray(positions)
    out = np.zeros((len(positions), model.config.embed_dim), dtype=np.float32)
    lengths = cache.lengths()[positions]
    for idx in _size_sorted_batches(lengths.tolist(), batch_size):
        states, mask = cache.batch(positions[idx].tolist())
        out[idx] = model.encode_text_states(states, mask).embedding.numpy()
    return out


@torch.no_grad()
def embed_texts_with_encoder(
    model: DualEncoder,
    tokenizer_dir: str,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 64,
) -> np.ndarray:
    """Through the full text tower (fine-tuned encoder): tokenizer -> encoder -> head."""
    model.eval()
    tokenizer = load_tokenizer(tokenizer_dir, max_length=max_length)
    out = np.zeros((len(texts), model.config.embed_dim), dtype=np.float32)
    lengths = [len(t) for t in texts]
    for idx in _size_sorted_batches(lengths, batch_size):
        tokens = encode(tokenizer, [texts[i] for i in idx])
        emb = model.encode_text(
            torch.from_numpy(tokens.input_ids), torch.from_numpy(tokens.attention_mask)
        )
        out[idx] = emb.embedding.numpy()
    return out
