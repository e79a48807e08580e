"""Frozen text-encoder token states, computed once and memory-mapped.

On 2 CPU cores a MiniLM forward pass over ChEBI-20's 30k descriptions takes minutes, while the
trainable layers above it take seconds per epoch. Training with a frozen encoder therefore
reads cached fp16 token states (the output of the frozen blocks) instead of re-running the
encoder every step. The cache key covers everything that changes the states: the encoder's
weights, the layer, the max length and the exact texts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from molret.text import load_tokenizer

from .text_encoder import encode_hidden_states, load_text_encoder, resolve_text_encoder

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("MOLRET_CACHE", Path.home() / ".cache" / "molret"))


def _encoder_fingerprint(encoder_dir: Path) -> str:
    """Cheap identity of the weights: config plus size and name of every weight file."""
    digest = hashlib.sha256()
    digest.update((encoder_dir / "config.json").read_bytes())
    for weights in sorted(encoder_dir.glob("*.safetensors")) + sorted(encoder_dir.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return digest.hexdigest()


def cache_key(encoder_dir: Path, layer: int, max_length: int, texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    digest.update(
        f"v{CACHE_FORMAT}|{_encoder_fingerprint(encoder_dir)}|{layer}|{max_length}|".encode()
    )
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:24]


@dataclass
class TokenStateCache:
    """Variable-length token states stored flat: rows `offsets[i]:offsets[i+1]` belong to text i."""

    states: np.ndarray  # float16 [total_tokens, hidden], memory-mapped
    offsets: np.ndarray  # int64 [n_texts + 1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def hidden_size(self) -> int:
        return int(self.states.shape[1])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded float32 states [B, L, H] and a bool mask [B, L] for the given texts."""
        lengths = [int(self.offsets[i + 1] - self.offsets[i]) for i in indices]
        width = max(lengths)
        out = np.zeros((len(indices), width, self.hidden_size), dtype=np.float32)
        mask = np.zeros((len(indices), width), dtype=bool)
        for row, (i, n) in enumerate(zip(indices, lengths, strict=True)):
            start = int(self.offsets[i])
            out[row, :n] = self.states[start : start + n]
            mask[row, :n] = True
        return torch.from_numpy(out), torch.from_numpy(mask)

    def packed(self, indices: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
        """The states of the given texts back to back (float32 [sum of lengths, H]) and the
        lengths. Training runs the text head on these: a random batch of ChEBI-20 descriptions
        padded to its longest one is only about 44% real tokens."""
        spans = [(int(self.offsets[i]), int(self.offsets[i + 1])) for i in indices]
        states = np.concatenate([self.states[a:b] for a, b in spans]).astype(np.float32)
        return torch.from_numpy(states), [b - a for a, b in spans]


def load_or_build(
    texts: Sequence[str],
    encoder_path: str | os.PathLike[str] | None,
    layer: int,
    max_length: int,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    show_progress: bool = True,
) -> TokenStateCache:
    """Return the cached states for `texts`, computing and storing them on a miss."""
    encoder_dir = resolve_text_encoder(encoder_path)
    if layer < 0:  # count from the top, so "-1" and "6" of a 6-block encoder share one cache
        config = json.loads((encoder_dir / "config.json").read_text())
        layer = int(config["num_hidden_layers"]) + 1 + layer
    root = (cache_dir or default_cache_dir()) / "text-states"
    key = cache_key(encoder_dir, layer, max_length, texts)
    folder = root / key
    if (folder / "meta.json").is_file():
        return _open(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{key}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    _compute(texts, encoder_dir, layer, max_length, tmp, batch_size, show_progress)
    with contextlib.suppress(OSError):  # another process finished first: keep its copy
        os.replace(tmp, folder)
    return _open(folder)


def _open(folder: Path) -> TokenStateCache:
    states = np.load(folder / "states.npy", mmap_mode="r")
    offsets = np.load(folder / "offsets.npy")
    return TokenStateCache(states=states, offsets=offsets)


def _compute(
    texts: Sequence[str],
    encoder_dir: Path,
    layer: int,
    max_length: int,
    folder: Path,
    batch_size: int,
    show_progress: bool,
) -> None:
    tokenizer = load_tokenizer(encoder_dir, max_length=max_length)
    model = load_text_encoder(encoder_dir).eval()
    encodings = tokenizer.encode_batch(list(texts))
    lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    hidden = int(model.config.hidden_size)
    states = np.lib.format.open_memmap(
        folder / "states.npy", mode="w+", dtype=np.float16, shape=(int(offsets[-1]), hidden)
    )
    # Length-sorted batches waste little compute on padding (about 2x faster than input order).
    order = np.argsort(lengths, kind="stable")
    started = time.perf_counter()
    bar = tqdm(total=len(texts), desc="text states", unit="text", disable=not show_progress)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = int(lengths[idx].max())
        ids = np.zeros((len(idx), width), dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            ids[row, : lengths[i]] = encodings[i].ids
            mask[row, : lengths[i]] = 1
        hs = encode_hidden_states(model, torch.from_numpy(ids), torch.from_numpy(mask), layer)
        hs16 = hs.to(torch.float16).numpy()
        for row, i in enumerate(idx):
            states[offsets[i] : offsets[i + 1]] = hs16[row, : lengths[i]]
        bar.update(len(idx))
    bar.close()
    states.flush()
    np.save(folder / "offsets.npy", offsets)
    meta = {
        "format": CACHE_FORMAT,
        "encoder": str(encoder_dir),
        "layer": layer,
        "max_length": max_length,
        "n_texts": len(texts),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
