"""Tokenization for the text tower, with the `tokenizers` library only (no torch, no transformers).

The same tokenizer files travel in the bundle, so training, the export parity check and the
serving engine all produce identical token ids from one implementation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

DEFAULT_MAX_LENGTH = 256


@dataclass(frozen=True)
class TokenBatch:
    """Token ids and attention mask, padded to a common length (int64, as BERT-style ONNX wants)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        return self.attention_mask.sum(axis=1)


@dataclass(frozen=True)
class TextError:
    """A per-item failure: one bad text never fails the rest of its batch."""

    index: int
    text: str
    reason: str


def tokenizer_file(model_dir: str | os.PathLike[str]) -> Path:
    """The `tokenizer.json` of a Hugging Face model folder or of a bundle."""
    path = Path(model_dir)
    candidate = path if path.name == "tokenizer.json" else path / "tokenizer.json"
    if not candidate.is_file():
        raise FileNotFoundError(
            f"no tokenizer.json in {path}: a text encoder folder (or bundle) must carry the "
            "fast-tokenizer file"
        )
    return candidate


def load_tokenizer(
    model_dir: str | os.PathLike[str], max_length: int = DEFAULT_MAX_LENGTH
) -> Tokenizer:
    """Load the fast tokenizer with truncation set and padding left to `encode`."""
    tokenizer = Tokenizer.from_file(str(tokenizer_file(model_dir)))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def validate_text(text: object) -> str | None:
    """Reason a query text cannot be embedded, or None when it is fine."""
    if not isinstance(text, str):
        return f"text must be a string, got {type(text).__name__}"
    if not text.strip():
        return "empty text"
    return None


def encode(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    pad_to: int | None = None,
) -> TokenBatch:
    """Tokenize and pad to the longest text (or to `pad_to` for fixed-shape runtimes).

    Raises ValueError on an invalid text; callers that must not fail a whole batch use
    `encode_valid`.
    """
    for index, text in enumerate(texts):
        reason = validate_text(text)
        if reason is not None:
            raise ValueError(f"text {index}: {reason}")
    encodings = tokenizer.encode_batch(list(texts))
    return pad_token_ids([e.ids for e in encodings], pad_to=pad_to)


def pad_token_ids(id_lists: Sequence[Sequence[int]], pad_to: int | None = None) -> TokenBatch:
    """Right-pad token id lists with 0 to the longest (or to ``pad_to``), with the mask."""
    longest = max((len(ids) for ids in id_lists), default=1)
    width = max(longest, 1) if pad_to is None else pad_to
    if width < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest text ({longest} tokens)")
    input_ids = np.zeros((len(id_lists), width), dtype=np.int64)
    attention_mask = np.zeros((len(id_lists), width), dtype=np.int64)
    for row, ids in enumerate(id_lists):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    return TokenBatch(input_ids=input_ids, attention_mask=attention_mask)


def encode_valid(
    tokenizer: Tokenizer, texts: Sequence[str], pad_to: int | None = None
) -> tuple[TokenBatch | None, list[int], list[TextError]]:
    """Encode the valid texts; report the others as per-item errors."""
    errors: list[TextError] = []
    keep: list[int] = []
    for index, text in enumerate(texts):
        reason = validate_text(text)
        if reason is None:
            keep.append(index)
        else:
            errors.append(TextError(index=index, text=str(text), reason=reason))
    if not keep:
        return None, keep, errors
    return encode(tokenizer, [texts[i] for i in keep], pad_to=pad_to), keep, errors
