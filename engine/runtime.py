"""Embeddings from a bundle with ONNX Runtime: the inference half of the engine, no torch.

One ``BundleEmbedder`` owns one ONNX Runtime session for the text tower and one per molecule
size bucket. Inputs are validated item by item first (``molret.text`` / ``molret.featurize``),
so a bad SMILES or an empty text becomes a per-item error and the rest of the batch is still
embedded. Molecules are grouped by the smallest bucket that holds them (static shapes), texts by
length (padding to the longest in a chunk wastes little); both are then run in chunks of at most
``max_batch`` rows so that memory stays bounded for any request size.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from molret.bundle import Bundle, bucket_name
from molret.featurize import (
    MOLECULE_KEYS,
    GraphBatch,
    MolGraph,
    featurize_many,
    pad_graphs,
)
from molret.graphs import group_by_bucket
from molret.text import load_tokenizer, pad_token_ids, validate_text


def molecule_feeds(batch: GraphBatch, names: Sequence[str]) -> dict[str, np.ndarray]:
    """ONNX feeds of a padded batch for a tower with these input names."""
    if MOLECULE_KEYS in names and batch.molecule_keys is None:
        raise ValueError("this bundle's molecule tower takes MACCS keys: featurize with keys=True")
    return {name: getattr(batch, name) for name in names}


# Padded-token budget of one text run (rows x longest row). On CPU, bigger runs are slower per
# text, not faster (benchmarks/text_chunk_budget.py, 2 cores, 2026-11-26): fp32 95.6 texts/s one
# at a time, 109.7 at 512 tokens, 104.9 at 1,024, 75.6 at 4,096; int8 160.1, 186.7, 170.9,
# 124.6. A GPU wants the opposite (large runs amortise launches).
CPU_TEXT_CHUNK_TOKENS = 512
GPU_TEXT_CHUNK_TOKENS = 8192


@dataclass(frozen=True)
class ItemError:
    """One input that produced no embedding: its position in the request and why."""

    index: int
    item: str
    reason: str


@dataclass
class EmbedResult:
    """Embeddings of the valid inputs: ``vectors[i]`` belongs to input ``indices[i]``."""

    vectors: np.ndarray
    indices: list[int]
    errors: list[ItemError] = field(default_factory=list)
    prepare_us: int = 0  # tokenize / featurize
    inference_us: int = 0


def length_chunks(lengths: Sequence[int], max_rows: int, max_tokens: int) -> list[np.ndarray]:
    """Row indices in ascending length, cut into chunks of at most ``max_rows`` rows whose
    padded size (rows x longest) stays within ``max_tokens`` (a longer single row runs alone)."""
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    chunks: list[np.ndarray] = []
    start = 0
    for position in range(len(order)):
        rows = position - start + 1
        if rows > max_rows or (rows > 1 and rows * lengths[order[position]] > max_tokens):
            chunks.append(order[start:position])
            start = position
    if start < len(order):
        chunks.append(order[start:])
    return chunks


def spinning_allowed(tower: str) -> bool:
    """Whether ONNX Runtime's intra-op threads of a tower's sessions busy-wait between parallel
    sections instead of sleeping. ``MOLRET_ORT_SPINNING``: ``text`` (default) = the text
    session spins and the molecule sessions do not; ``all`` / ``1``; ``none`` / ``0``.

    Each session owns its thread pool. Spinning saves a thread wake-up at every parallel op,
    which pays off in the text tower's long chain of large matmuls, but a spinning pool also
    holds a core that the event loop, featurization and index search of the next request need.
    Measured over a 1M index (int8 bundle, 2 cores, c=1): with everything spinning the server
    burnt 1.8-1.9 cores and molecule->molecules p99 was 13.0 ms; with nothing spinning 1.0-1.3
    cores and 7.5-8.0 ms, but text inference took ~1 ms longer on average (5.5-6.1 vs 4.1-4.5).
    """
    mode = os.environ.get("MOLRET_ORT_SPINNING", "text").strip().lower()
    if mode in ("1", "all", "true", "yes"):
        return True
    if mode in ("0", "none", "false", "no"):
        return False
    return tower == "text"


def _session_options(threads: int | None, spinning: bool = True) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build has it, else CPU (MOLRET_ORT_PROVIDERS overrides)."""
    import onnxruntime as ort

    wanted = os.environ.get("MOLRET_ORT_PROVIDERS")
    if wanted:
        return [p.strip() for p in wanted.split(",") if p.strip()]
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class BundleEmbedder:
    """Text and molecule embeddings with ONNX Runtime from a verified bundle."""

    def __init__(
        self,
        bundle: Bundle,
        threads: int | None = None,
        max_batch: int = 64,
        providers: Sequence[str] | None = None,
        tensorrt: bool = False,
        max_tokens: int | None = None,
    ) -> None:
        """``tensorrt=True`` runs the bundle's TensorRT plans instead (GPU, TensorRT 10).
        ``max_tokens``: padded tokens per text run; default by device (see
        ``CPU_TEXT_CHUNK_TOKENS``)."""
        import onnxruntime as ort

        self.bundle = bundle
        self.dim = bundle.embedding_dim
        self.max_batch = max_batch
        chosen = list(providers or default_providers())
        on_gpu = tensorrt or "CUDAExecutionProvider" in chosen
        if max_tokens is None:
            max_tokens = GPU_TEXT_CHUNK_TOKENS if on_gpu else CPU_TEXT_CHUNK_TOKENS
        self.max_tokens = max_tokens
        self.buckets = bundle.buckets
        self.molecule_inputs = bundle.molecule_inputs
        self.takes_keys = bundle.takes_molecule_keys  # featurize with keys=True
        self.tokenizer = load_tokenizer(bundle.tokenizer_path, max_length=bundle.text_max_length)
        text_options = _session_options(threads, spinning_allowed("text"))
        molecule_options = _session_options(threads, spinning_allowed("molecule"))
        self.text_session = ort.InferenceSession(
            str(bundle.text_onnx), sess_options=text_options, providers=chosen
        )
        self.molecule_sessions = {
            bucket: ort.InferenceSession(
                str(bundle.molecule_onnx(bucket)), sess_options=molecule_options, providers=chosen
            )
            for bucket in self.buckets
        }
        if tensorrt:
            self._use_tensorrt_plans()

    def _use_tensorrt_plans(self) -> None:
        from molret.bundle import BundleError

        from .tensorrt_runtime import TensorRTSession

        plans = self.bundle.tensorrt_plans()
        if not plans:
            raise BundleError(
                f"bundle {self.bundle.root} has no TensorRT plans (export it with --tensorrt)"
            )
        self.text_session = TensorRTSession(plans["text"])  # type: ignore[assignment]
        for bucket in self.buckets:
            self.molecule_sessions[bucket] = TensorRTSession(plans[bucket_name(*bucket)])  # type: ignore[assignment]

    # ---- texts -------------------------------------------------------------------------

    def embed_token_ids(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """One already-tokenized chunk -> [B, d] float32."""
        (out,) = self.text_session.run(
            None, {"input_ids": input_ids, "attention_mask": attention_mask}
        )
        return np.asarray(out, dtype=np.float32)

    def embed_id_lists(self, id_lists: Sequence[Sequence[int]]) -> np.ndarray:
        """Token id lists -> [n, d], run in length-sorted chunks under a padded-token budget.

        Sorting keeps padding small; the budget (rows x longest row <= ``max_tokens``) keeps a
        chunk of long texts from paying attention over 256 rows x 256 positions at once, which
        measured slower per text than batch 1 (35.6 vs 125.6 texts/s, 2 cores).
        """
        vectors = np.zeros((len(id_lists), self.dim), dtype=np.float32)
        for rows in length_chunks([len(ids) for ids in id_lists], self.max_batch, self.max_tokens):
            tokens = pad_token_ids([id_lists[r] for r in rows])
            vectors[rows] = self.embed_token_ids(tokens.input_ids, tokens.attention_mask)
        return vectors

    def embed_texts(self, texts: Sequence[str]) -> EmbedResult:
        start = time.perf_counter_ns()
        reasons = [validate_text(text) for text in texts]
        errors = [ItemError(i, str(texts[i]), r) for i, r in enumerate(reasons) if r is not None]
        keep = [i for i, reason in enumerate(reasons) if reason is None]
        id_lists = [e.ids for e in self.tokenizer.encode_batch([texts[i] for i in keep])]
        prepared = time.perf_counter_ns()
        vectors = self.embed_id_lists(id_lists)
        done = time.perf_counter_ns()
        return EmbedResult(
            vectors, keep, errors, (prepared - start) // 1000, (done - prepared) // 1000
        )

    def embed_text_list(self, texts: Sequence[str]) -> np.ndarray:
        """All texts or a ValueError naming the first bad one (for evaluation pools)."""
        result = self.embed_texts(texts)
        if result.errors:
            first = result.errors[0]
            raise ValueError(f"text {first.index}: {first.reason}")
        return result.vectors

    # ---- molecules ---------------------------------------------------------------------

    def embed_graphs(self, graphs: Sequence[MolGraph]) -> np.ndarray:
        """Graphs that each fit a bucket (``featurize_many(..., buckets)`` guarantees it)."""
        vectors = np.zeros((len(graphs), self.dim), dtype=np.float32)
        for bucket, positions in group_by_bucket(graphs, self.buckets).items():
            session = self.molecule_sessions[bucket]
            for lo in range(0, len(positions), self.max_batch):
                rows = positions[lo : lo + self.max_batch]
                batch = pad_graphs([graphs[r] for r in rows], *bucket)
                (out,) = session.run(None, molecule_feeds(batch, self.molecule_inputs))
                vectors[rows] = np.asarray(out, dtype=np.float32)
        return vectors

    def embed_smiles(self, smiles: Sequence[str]) -> EmbedResult:
        start = time.perf_counter_ns()
        graphs, featurize_errors = featurize_many(
            smiles, buckets=self.buckets, keys=self.takes_keys
        )
        errors = [ItemError(e.index, e.smiles, e.reason) for e in featurize_errors]
        keep = [i for i, g in enumerate(graphs) if g is not None]
        prepared = time.perf_counter_ns()
        vectors = self.embed_graphs([graphs[i] for i in keep])  # type: ignore[misc]
        done = time.perf_counter_ns()
        return EmbedResult(
            vectors, keep, errors, (prepared - start) // 1000, (done - prepared) // 1000
        )

    def bucket_names(self) -> list[str]:
        return [bucket_name(*b) for b in self.buckets]
