"""The `molret.v1.Retrieval` gRPC service: request validation, limits, deadlines, auth, metrics.

Layers (as in text-embeddings-inference): this module is the router; the queue is
``molret.engine.batching`` (the only place requests are merged into model batches); the backend
is ``molret.engine.runtime.BundleEmbedder`` (ONNX Runtime); the index is
``molret.engine.index_store.IndexStore`` (USearch HNSW + SQLite metadata).

A request goes: validate (INVALID_ARGUMENT / RESOURCE_EXHAUSTED) -> prepare (featurize or
tokenize, in a worker thread) -> the tower's micro-batcher -> index search (worker thread) ->
response with one entry per input, each with an optional per-item error, and the timings.

Everything loaded (bundle, embedder, batchers, indexes) lives in one immutable
:class:`Snapshot`. ``Reload`` builds and warms up a new snapshot beside the old one and then
swaps the reference: requests that started on the old snapshot finish on it, and its batchers
and indexes are closed only once the last of them is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np

from molret.bundle import Bundle, BundleError, load_bundle
from molret.engine.batching import BatcherClosed, BatchStats, MicroBatcher
from molret.engine.index_store import IndexStore, IndexStoreError, NewRecord
from molret.engine.proto import retrieval_pb2 as pb
from molret.engine.proto import retrieval_pb2_grpc as pb_grpc
from molret.engine.runtime import BundleEmbedder, molecule_feeds
from molret.featurize import MolGraph, featurize, featurize_many, pad_graphs
from molret.text import pad_token_ids, validate_text

log = logging.getLogger(__name__)

SERVICE_NAME = "molret.v1.Retrieval"
_T = TypeVar("_T")


# ---- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchingConfig:
    """Budgets of the two micro-batchers (see molret.engine.batching)."""

    enabled: bool = True
    max_delay_ms: float = 0.0
    molecule_max_items: int = 128
    molecule_max_atoms: int = 4096
    text_max_items: int = 64
    text_max_tokens: int = 8192


@dataclass(frozen=True)
class ServiceConfig:
    """Limits and policy of one server."""

    max_items_per_request: int = 1024
    max_stream_items: int = 100_000
    max_in_flight: int = 256
    max_k: int = 1000
    stream_chunk: int = 256
    token: str | None = None
    threads: int | None = None  # ONNX Runtime intra-op threads (None: all cores)
    batching: BatchingConfig = field(default_factory=BatchingConfig)


# ---- metrics ---------------------------------------------------------------------------------

_LATENCY_BUCKETS: tuple[float, ...] = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025)
_LATENCY_BUCKETS += (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    """Prometheus metrics of one server, in their own registry (several servers per process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "molret_requests",
            "RPCs by method and final status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "molret_stage_seconds",
            "Server-side time per request and stage (prepare, queue, inference, search, total)",
            ["method", "stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.request_items = Histogram(
            "molret_request_items",
            "Items (texts or SMILES) per request",
            ["method"],
            buckets=_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_items = Histogram(
            "molret_batch_items",
            "Items per inference run of a micro-batcher",
            ["tower"],
            buckets=_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "molret_batch_requests",
            "Requests merged into one inference run",
            ["tower"],
            buckets=_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "molret_batch_inference_seconds",
            "Duration of one inference run",
            ["tower"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "molret_queue_depth",
            "Items waiting in a micro-batcher",
            ["tower"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "molret_in_flight_requests", "RPCs being served", registry=self.registry
        )
        self.index_size = Gauge(
            "molret_index_size", "Items in a loaded index", ["kind"], registry=self.registry
        )
        self.ready = Gauge(
            "molret_ready", "1 once the towers are warmed up", registry=self.registry
        )

    def on_batch(self, stats: BatchStats) -> None:
        self.batch_items.labels(stats.name).observe(stats.items)
        self.batch_requests.labels(stats.name).observe(stats.requests)
        self.batch_seconds.labels(stats.name).observe(stats.seconds)


# ---- loaded state ----------------------------------------------------------------------------


class RequestFailed(Exception):
    """Ends an RPC with a status code (converted to ``context.abort`` in one place)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Models:
    """A bundle's embedder and its two micro-batchers."""

    bundle: Bundle
    embedder: BundleEmbedder
    texts: MicroBatcher[list[int], np.ndarray]
    molecules: MicroBatcher[MolGraph, np.ndarray]

    async def close(self) -> None:
        await asyncio.gather(self.texts.close(), self.molecules.close())


@dataclass
class Snapshot:
    """Everything one request needs; replaced as a whole by Reload."""

    models: Models
    molecule_index: IndexStore
    text_index: IndexStore | None
    users: int = 0
    retired: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)


def load_models(
    bundle_dir: str | Path,
    threads: int | None,
    batching: BatchingConfig,
    on_batch: Callable[[BatchStats], None] | None = None,
) -> Models:
    """Load and verify a bundle and open its ONNX sessions (blocking; call off the loop)."""
    bundle = load_bundle(bundle_dir)
    max_batch = max(batching.molecule_max_items, batching.text_max_items)
    embedder = BundleEmbedder(bundle, threads=threads, max_batch=max_batch)
    return Models(bundle, embedder, *_batchers(embedder, batching, on_batch))


def _batchers(
    embedder: BundleEmbedder,
    batching: BatchingConfig,
    on_batch: Callable[[BatchStats], None] | None,
) -> tuple[MicroBatcher[list[int], np.ndarray], MicroBatcher[MolGraph, np.ndarray]]:
    delay = batching.max_delay_ms / 1000.0
    texts: MicroBatcher[list[int], np.ndarray] = MicroBatcher(
        functools.partial(_infer_texts, embedder),
        cost=len,
        max_items=batching.text_max_items,
        max_cost=batching.text_max_tokens,
        max_delay_s=delay,
        enabled=batching.enabled,
        name="text",
        on_batch=on_batch,
    )
    molecules: MicroBatcher[MolGraph, np.ndarray] = MicroBatcher(
        embedder.embed_graphs,
        cost=lambda graph: graph.n_atoms,
        max_items=batching.molecule_max_items,
        max_cost=batching.molecule_max_atoms,
        max_delay_s=delay,
        enabled=batching.enabled,
        name="molecule",
        on_batch=on_batch,
    )
    return texts, molecules


def _infer_texts(embedder: BundleEmbedder, id_lists: Sequence[list[int]]) -> np.ndarray:
    """One batch of tokenized texts -> [n, d] (length-sorted chunks, see embed_id_lists)."""
    return embedder.embed_id_lists(id_lists)


def warm_up(embedder: BundleEmbedder) -> None:
    """Run one small batch through the text tower and through every molecule bucket, so the
    first real request does not pay for ONNX Runtime's lazy initialisation."""
    ids = embedder.tokenizer.encode("warm-up text for the molecule retrieval service").ids
    tokens = pad_token_ids([ids, ids[:2]])
    embedder.embed_token_ids(tokens.input_ids, tokens.attention_mask)
    graph = featurize("CCO", keys=embedder.takes_keys)
    for bucket, session in embedder.molecule_sessions.items():
        batch = pad_graphs([graph, graph], *bucket)
        session.run(None, molecule_feeds(batch, embedder.molecule_inputs))


def open_index(path: str | Path, kind: str, bundle: Bundle) -> IndexStore:
    """Open an index and check it fits the bundle (kind, bundle id, dimension)."""
    index = IndexStore.open(path, expected_bundle_id=bundle.bundle_id)
    if index.kind != kind:
        index.close()
        raise IndexStoreError(f"index {path} holds {index.kind} vectors, expected a {kind} index")
    if index.dim != bundle.embedding_dim:
        index.close()
        raise IndexStoreError(
            f"index {path} has dimension {index.dim}, the bundle embeds to {bundle.embedding_dim}"
        )
    return index


# ---- the servicer ----------------------------------------------------------------------------


@dataclass
class _Embedded:
    """The valid items' vectors (``vectors[i]`` is item ``keep[i]``), item errors, timings."""

    vectors: np.ndarray
    keep: list[int]
    errors: list[pb.ItemError]
    prepare_us: int
    queue_us: int
    inference_us: int
    identities: list[tuple[str | None, str | None]]  # (canonical SMILES, InChIKey) if asked


def _timings(
    prepare_us: int = 0,
    queue_us: int = 0,
    inference_us: int = 0,
    search_us: int = 0,
    started_ns: int | None = None,
) -> pb.Timings:
    total = (time.perf_counter_ns() - started_ns) // 1000 if started_ns is not None else 0
    return pb.Timings(
        prepare_us=max(0, prepare_us),
        queue_us=max(0, queue_us),
        inference_us=max(0, inference_us),
        search_us=max(0, search_us),
        total_us=max(0, total),
    )


def _item_error(index: int, item: object, reason: str) -> pb.ItemError:
    return pb.ItemError(
        index=index, input=item if isinstance(item, str) else repr(item), reason=reason
    )


def _guarded(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Unary RPC wrapper: readiness, in-flight limit, status-code metrics, one abort path."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(
        self: RetrievalService, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        async with self._call(name, context):
            return await method(self, request, context)

    return wrapper


def _guarded_stream(
    method: Callable[..., AsyncIterator[Any]],
) -> Callable[..., AsyncIterator[Any]]:
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(
        self: RetrievalService, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async with self._call(name, context):
            async for response in method(self, request, context):
                yield response

    return wrapper


class RetrievalService(pb_grpc.RetrievalServicer):
    """The servicer. ``snapshot`` is None until the server has loaded and warmed up."""

    def __init__(self, config: ServiceConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.snapshot: Snapshot | None = None
        self.ready = False
        self.in_flight = 0
        # RDKit holds the GIL and its error-log capture (used for failure reasons) is
        # process-wide, so molecules are prepared on one thread; tokenization (Rust, releases
        # the GIL) gets its own.
        self.molecule_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="molret-rdkit")
        self.text_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="molret-tokenize")
        self.index_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="molret-index")
        self._mutation = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        # One search queue per open index: the query vectors of every request that finished
        # its tower batch together go to USearch in one batched call.
        self._searchers: dict[int, MicroBatcher[tuple[np.ndarray, int], tuple[Any, Any]]] = {}
        for tower in ("text", "molecule"):
            self.metrics.queue_depth.labels(tower).set_function(
                functools.partial(self._queue_depth, tower)
            )

    # ---- state -------------------------------------------------------------------------

    def _queue_depth(self, tower: str) -> float:
        snap = self.snapshot
        if snap is None:
            return 0.0
        batcher = snap.models.texts if tower == "text" else snap.models.molecules
        return float(batcher.queue_depth)

    def install(
        self, models: Models, molecule_index: IndexStore, text_index: IndexStore | None
    ) -> None:
        """Make a loaded (and warmed-up) set of objects the one that requests use."""
        old = self.snapshot
        self.snapshot = Snapshot(models, molecule_index, text_index)
        self.metrics.index_size.labels("molecule").set(molecule_index.size)
        if text_index is not None:
            self.metrics.index_size.labels("text").set(text_index.size)
        if old is not None:
            task = asyncio.get_running_loop().create_task(self._retire(old, self.snapshot))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: Snapshot, new: Snapshot) -> None:
        """Close what ``old`` owned and ``new`` does not share, once its last request is done."""
        old.retired = True
        if old.users == 0:
            old.idle.set()
        await old.idle.wait()
        if old.models is not new.models:
            await old.models.close()
        for index in (old.molecule_index, old.text_index):
            if index is not None and index not in (new.molecule_index, new.text_index):
                await self._close_searcher(index)
                index.close()

    @contextlib.asynccontextmanager
    async def _use(self) -> AsyncIterator[Snapshot]:
        snap = self.snapshot
        if snap is None or not self.ready:
            raise RequestFailed(grpc.StatusCode.UNAVAILABLE, "server is warming up; retry shortly")
        snap.users += 1
        try:
            yield snap
        finally:
            snap.users -= 1
            if snap.retired and snap.users == 0:
                snap.idle.set()

    async def close(self) -> None:
        """Release everything (after the gRPC server has stopped)."""
        snap, self.snapshot = self.snapshot, None
        self.ready = False
        for task in list(self._retiring):
            with contextlib.suppress(Exception):
                await task
        for searcher in list(self._searchers.values()):
            await searcher.close()
        self._searchers.clear()
        if snap is not None:
            await snap.models.close()
            snap.molecule_index.close()
            if snap.text_index is not None:
                snap.text_index.close()
        self.molecule_pool.shutdown(wait=False)
        self.text_pool.shutdown(wait=False)
        self.index_pool.shutdown(wait=False)

    def _searcher(self, index: IndexStore) -> MicroBatcher[tuple[np.ndarray, int], tuple[Any, Any]]:
        searcher = self._searchers.get(id(index))
        if searcher is None:
            batching = self.config.batching
            searcher = MicroBatcher(
                functools.partial(_batched_search, index),
                max_items=1024,
                max_delay_s=0.0,  # requests of one tower batch arrive together; never wait
                enabled=batching.enabled,
                executor=self.index_pool,
                name=f"search-{index.kind}",
                on_batch=self.metrics.on_batch,
            )
            self._searchers[id(index)] = searcher
        return searcher

    async def _search_batched(
        self, index: IndexStore, vectors: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray, list[Any]]:
        """Top-k keys, scores and the metadata of every hit for this request's vectors."""
        if len(vectors) == 0:
            empty = np.zeros((0, k), dtype=np.int64)
            return empty, empty.astype(np.float32), []
        try:
            out = await self._searcher(index).submit([(v, k) for v in vectors])
        except BatcherClosed as exc:
            raise RequestFailed(grpc.StatusCode.UNAVAILABLE, str(exc)) from exc
        keys = np.stack([row_keys for row_keys, _ in out.results])
        scores = np.stack([row_scores for _, row_scores in out.results])
        records = await self._run_pool(self.index_pool, index.records, keys.reshape(-1).tolist())
        return keys, scores, records

    async def _close_searcher(self, index: IndexStore) -> None:
        searcher = self._searchers.pop(id(index), None)
        if searcher is not None:
            await searcher.close()

    # ---- one place for limits, metrics and aborts ----------------------------------------

    @contextlib.asynccontextmanager
    async def _call(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        counted = False
        try:
            if self.in_flight >= self.config.max_in_flight:
                raise RequestFailed(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"server busy: {self.in_flight} requests in flight (limit "
                    f"{self.config.max_in_flight}); retry with backoff",
                )
            self.in_flight += 1
            counted = True
            self.metrics.in_flight.inc()
            yield
        except RequestFailed as exc:
            code = exc.code
            await context.abort(exc.code, exc.message)
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except asyncio.CancelledError:
            # gRPC cancels the handler when the client goes away or its deadline passes.
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", method)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            if counted:
                self.in_flight -= 1
                self.metrics.in_flight.dec()
            self.metrics.requests.labels(method, code.name).inc()
            self.metrics.stage_seconds.labels(method, "total").observe(
                time.perf_counter() - started
            )

    def _observe(self, method: str, timings: pb.Timings, items: int) -> None:
        stage = self.metrics.stage_seconds
        stage.labels(method, "prepare").observe(timings.prepare_us / 1e6)
        stage.labels(method, "queue").observe(timings.queue_us / 1e6)
        stage.labels(method, "inference").observe(timings.inference_us / 1e6)
        if timings.search_us:
            stage.labels(method, "search").observe(timings.search_us / 1e6)
        self.metrics.request_items.labels(method).observe(items)

    async def _before_deadline(self, context: grpc.aio.ServicerContext, work: Awaitable[_T]) -> _T:
        """Await ``work`` within the client's deadline; DEADLINE_EXCEEDED otherwise."""
        remaining = context.time_remaining()
        if remaining is None:
            return await work
        if remaining <= 0:
            if asyncio.iscoroutine(work):
                work.close()
            raise RequestFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        try:
            return await asyncio.wait_for(work, remaining)
        except asyncio.TimeoutError:
            raise RequestFailed(
                grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while the request was served"
            ) from None

    def _check_batch(self, items: Sequence[object], what: str, limit: int | None = None) -> None:
        limit = limit or self.config.max_items_per_request
        if not items:
            raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, f"empty request: no {what}")
        if len(items) > limit:
            raise RequestFailed(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(items)} {what} in one request, more than the limit of {limit}; split the "
                "request (the streaming embed RPCs take larger ones)",
            )

    def _check_k(self, k: int) -> None:
        if k <= 0:
            raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, f"k must be >= 1, got {k}")
        if k > self.config.max_k:
            raise RequestFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"k={k} is above this server's limit of {self.config.max_k}",
            )

    def _check_token(self, context: grpc.aio.ServicerContext, method: str) -> None:
        token = self.config.token
        if not token:
            return
        metadata = {key.lower(): value for key, value in (context.invocation_metadata() or ())}
        given = metadata.get("authorization", "")
        if not isinstance(given, str) or not hmac.compare_digest(
            given.encode(), f"Bearer {token}".encode()
        ):
            raise RequestFailed(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method} changes the server and needs `authorization: Bearer <token>` metadata",
            )

    # ---- the shared embedding path ---------------------------------------------------------

    async def _run_pool(self, pool: ThreadPoolExecutor, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def _embed(
        self,
        snap: Snapshot,
        context: grpc.aio.ServicerContext,
        tower: str,
        items: Sequence[str],
        identify: bool = False,
    ) -> _Embedded:
        """Prepare (in a worker thread), then queue and infer in the tower's micro-batcher.

        ``identify`` (molecules only) also computes each valid molecule's canonical SMILES and
        InChIKey, exactly as ``molret index build`` does, for AddMolecules.
        """
        models = snap.models
        started = time.perf_counter_ns()
        identities: list[tuple[str | None, str | None]] = []
        if tower == "molecule" and identify:
            from molret.engine.index_build import featurize_shard

            rows = await self._before_deadline(
                context,
                self._run_pool(
                    self.molecule_pool,
                    featurize_shard,
                    list(items),
                    models.embedder.buckets,
                    models.embedder.takes_keys,
                ),
            )
            errors = [
                _item_error(i, items[i], row.reason or "invalid SMILES")
                for i, row in enumerate(rows)
                if row.graph is None
            ]
            keep = [i for i, row in enumerate(rows) if row.graph is not None]
            prepared: list[Any] = [rows[i].graph for i in keep]
            identities = [(rows[i].canonical_smiles, rows[i].inchikey) for i in keep]
            batcher: MicroBatcher[Any, np.ndarray] = models.molecules
        elif tower == "molecule":
            graphs, failures = await self._before_deadline(
                context,
                self._run_pool(
                    self.molecule_pool,
                    featurize_many,
                    list(items),
                    models.embedder.buckets,
                    models.embedder.takes_keys,
                ),
            )
            errors = [_item_error(f.index, f.smiles, f.reason) for f in failures]
            keep = [i for i, g in enumerate(graphs) if g is not None]
            prepared = [graphs[i] for i in keep]
            batcher = models.molecules
        else:
            reasons = [validate_text(t) for t in items]
            errors = [_item_error(i, items[i], r) for i, r in enumerate(reasons) if r is not None]
            keep = [i for i, r in enumerate(reasons) if r is None]
            encodings = await self._before_deadline(
                context,
                self._run_pool(
                    self.text_pool,
                    models.embedder.tokenizer.encode_batch,
                    [items[i] for i in keep],
                ),
            )
            prepared = [list(e.ids) for e in encodings]
            batcher = models.texts
        prepare_us = (time.perf_counter_ns() - started) // 1000
        try:
            out = await self._before_deadline(context, batcher.submit(prepared))
        except BatcherClosed as exc:
            raise RequestFailed(grpc.StatusCode.UNAVAILABLE, str(exc)) from exc
        dim = models.embedder.dim
        vectors = (
            np.stack(out.results).astype(np.float32, copy=False)
            if out.results
            else np.zeros((0, dim), dtype=np.float32)
        )
        return _Embedded(
            vectors, keep, errors, prepare_us, out.queue_us, out.inference_us, identities
        )

    async def _embed_response(
        self,
        snap: Snapshot,
        context: grpc.aio.ServicerContext,
        tower: str,
        items: Sequence[str],
        offset: int = 0,
    ) -> pb.EmbedResponse:
        started = time.perf_counter_ns()
        done = await self._embed(snap, context, tower, items)
        entries: list[pb.Embedding | None] = [None] * len(items)
        for row, index in enumerate(done.keep):
            entries[index] = pb.Embedding(index=offset + index, values=done.vectors[row].tolist())
        for error in done.errors:
            error.index += offset
            entries[error.index - offset] = pb.Embedding(index=error.index, error=error)
        return pb.EmbedResponse(
            embeddings=entries,
            dim=snap.models.embedder.dim,
            bundle_id=snap.models.bundle.bundle_id,
            timings=_timings(done.prepare_us, done.queue_us, done.inference_us, 0, started),
        )

    # ---- embed RPCs ------------------------------------------------------------------------

    @_guarded
    async def EmbedTexts(self, request: pb.EmbedTextsRequest, context: Any) -> pb.EmbedResponse:
        self._check_batch(request.texts, "texts")
        async with self._use() as snap:
            response = await self._embed_response(snap, context, "text", list(request.texts))
        self._observe("EmbedTexts", response.timings, len(request.texts))
        return response

    @_guarded
    async def EmbedMolecules(
        self, request: pb.EmbedMoleculesRequest, context: Any
    ) -> pb.EmbedResponse:
        self._check_batch(request.smiles, "SMILES")
        async with self._use() as snap:
            response = await self._embed_response(snap, context, "molecule", list(request.smiles))
        self._observe("EmbedMolecules", response.timings, len(request.smiles))
        return response

    async def _stream(
        self, method: str, tower: str, items: list[str], chunk: int, context: Any
    ) -> AsyncIterator[pb.EmbedResponse]:
        self._check_batch(
            items, "texts" if tower == "text" else "SMILES", self.config.max_stream_items
        )
        size = chunk if chunk > 0 else self.config.stream_chunk
        size = min(size, self.config.max_items_per_request)
        async with self._use() as snap:
            starts = iter(range(0, len(items), size))
            pending: deque[asyncio.Task[pb.EmbedResponse]] = deque()

            def schedule() -> None:
                lo = next(starts, None)
                if lo is not None:
                    part = items[lo : lo + size]
                    pending.append(
                        asyncio.ensure_future(self._embed_response(snap, context, tower, part, lo))
                    )

            try:
                for _ in range(2):  # one chunk in the model while the previous one is sent
                    schedule()
                while pending:
                    response = await pending.popleft()
                    schedule()
                    self._observe(method, response.timings, len(response.embeddings))
                    yield response
            finally:
                for task in pending:
                    task.cancel()
                for task in pending:
                    with contextlib.suppress(BaseException):
                        await task

    @_guarded_stream
    async def StreamEmbedTexts(
        self, request: pb.EmbedTextsRequest, context: Any
    ) -> AsyncIterator[pb.EmbedResponse]:
        async for response in self._stream(
            "StreamEmbedTexts", "text", list(request.texts), request.chunk_size, context
        ):
            yield response

    @_guarded_stream
    async def StreamEmbedMolecules(
        self, request: pb.EmbedMoleculesRequest, context: Any
    ) -> AsyncIterator[pb.EmbedResponse]:
        async for response in self._stream(
            "StreamEmbedMolecules", "molecule", list(request.smiles), request.chunk_size, context
        ):
            yield response

    # ---- search RPCs -----------------------------------------------------------------------

    async def _search(
        self,
        method: str,
        tower: str,
        target: str,
        items: list[str],
        k: int,
        context: Any,
    ) -> pb.SearchResponse:
        self._check_batch(items, "texts" if tower == "text" else "SMILES")
        self._check_k(k)
        started = time.perf_counter_ns()
        async with self._use() as snap:
            index = snap.molecule_index if target == "molecule" else snap.text_index
            if index is None:
                raise RequestFailed(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "this server has no text index (start it with --text-index)",
                )
            done = await self._embed(snap, context, tower, items)
            search_started = time.perf_counter_ns()
            keys, scores, records = await self._before_deadline(
                context, self._search_batched(index, done.vectors, k)
            )
            search_us = (time.perf_counter_ns() - search_started) // 1000
            size = index.size
        results: list[pb.QueryResult | None] = [None] * len(items)
        for row, position in enumerate(done.keep):
            hits = []
            for col in range(keys.shape[1]):
                key = int(keys[row, col])
                record = records[row * keys.shape[1] + col]
                if key < 0 or record is None:
                    continue
                hits.append(
                    pb.Hit(
                        score=float(scores[row, col]),
                        key=key,
                        name=record.name or "",
                        smiles=record.smiles or "",
                        canonical_smiles=record.canonical_smiles or "",
                        inchikey=record.inchikey or "",
                        text=record.text or "",
                    )
                )
            results[position] = pb.QueryResult(index=position, hits=hits)
        for error in done.errors:
            results[error.index] = pb.QueryResult(index=error.index, error=error)
        response = pb.SearchResponse(
            results=results,
            index_kind=target,
            index_size=size,
            timings=_timings(done.prepare_us, done.queue_us, done.inference_us, search_us, started),
        )
        self._observe(method, response.timings, len(items))
        return response

    @_guarded
    async def SearchTextToMolecules(
        self, request: pb.SearchTextsRequest, context: Any
    ) -> pb.SearchResponse:
        return await self._search(
            "SearchTextToMolecules", "text", "molecule", list(request.texts), request.k, context
        )

    @_guarded
    async def SearchMoleculeToTexts(
        self, request: pb.SearchMoleculesRequest, context: Any
    ) -> pb.SearchResponse:
        return await self._search(
            "SearchMoleculeToTexts", "molecule", "text", list(request.smiles), request.k, context
        )

    @_guarded
    async def SearchMoleculeToMolecules(
        self, request: pb.SearchMoleculesRequest, context: Any
    ) -> pb.SearchResponse:
        return await self._search(
            "SearchMoleculeToMolecules",
            "molecule",
            "molecule",
            list(request.smiles),
            request.k,
            context,
        )

    # ---- info ------------------------------------------------------------------------------

    @_guarded
    async def GetIndexInfo(
        self, request: pb.GetIndexInfoRequest, context: Any
    ) -> pb.GetIndexInfoResponse:
        async with self._use() as snap:
            bundle = snap.models.bundle
            response = pb.GetIndexInfoResponse(
                bundle_id=bundle.bundle_id,
                dim=bundle.embedding_dim,
                precision=bundle.precision,
                model_name=str(bundle.manifest.get("model_name", "")),
                buckets=snap.models.embedder.bucket_names(),
                text_max_length=bundle.text_max_length,
                molecule_index=_index_info(snap.molecule_index),
                batching=self.config.batching.enabled,
                max_items_per_request=self.config.max_items_per_request,
                max_k=self.config.max_k,
            )
            if snap.text_index is not None:
                response.text_index.CopyFrom(_index_info(snap.text_index))
        return response

    # ---- mutations -------------------------------------------------------------------------

    @_guarded
    async def AddMolecules(
        self, request: pb.AddMoleculesRequest, context: Any
    ) -> pb.AddMoleculesResponse:
        self._check_token(context, "AddMolecules")
        molecules = list(request.molecules)
        self._check_batch(molecules, "molecules")
        started = time.perf_counter_ns()
        smiles = [m.smiles for m in molecules]
        async with self._use() as snap:
            done = await self._embed(snap, context, "molecule", smiles, identify=True)
            records = [
                NewRecord(
                    name=molecules[i].name,
                    smiles=smiles[i],
                    canonical_smiles=canonical,
                    inchikey=inchikey,
                    text=molecules[i].text or None,
                )
                for i, (canonical, inchikey) in zip(done.keep, done.identities, strict=True)
            ]
            index = snap.molecule_index
            write_started = time.perf_counter_ns()
            # Adds and saves of one index are serialized with each other and with Reload; the
            # deadline is not applied here: a half-finished write is worse than a late answer.
            async with self._mutation:
                added = await self._run_pool(self.index_pool, index.add, done.vectors, records)
                if request.persist:
                    await self._run_pool(self.index_pool, index.save)
            write_us = (time.perf_counter_ns() - write_started) // 1000
            size = index.size
        self.metrics.index_size.labels("molecule").set(size)
        duplicates = set(added.duplicates)
        items: list[pb.AddedMolecule | None] = [None] * len(molecules)
        for row, position in enumerate(done.keep):
            key = added.keys[row]
            items[position] = pb.AddedMolecule(
                index=position, key=-1 if key is None else int(key), duplicate=row in duplicates
            )
        for error in done.errors:
            items[error.index] = pb.AddedMolecule(index=error.index, key=-1, error=error)
        response = pb.AddMoleculesResponse(
            molecules=items,
            index_size=size,
            persisted=bool(request.persist),
            timings=_timings(done.prepare_us, done.queue_us, done.inference_us, write_us, started),
        )
        self._observe("AddMolecules", response.timings, len(molecules))
        return response

    @_guarded
    async def Reload(self, request: pb.ReloadRequest, context: Any) -> pb.ReloadResponse:
        self._check_token(context, "Reload")
        if not (request.bundle_dir or request.index_dir or request.text_index_dir):
            raise RequestFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                "nothing to reload: give bundle_dir, index_dir and/or text_index_dir",
            )
        started = time.perf_counter()
        async with self._mutation:
            current = self.snapshot
            if current is None or not self.ready:
                raise RequestFailed(grpc.StatusCode.UNAVAILABLE, "server is warming up")
            try:
                (
                    models,
                    molecule_index,
                    text_index,
                ) = await asyncio.get_running_loop().run_in_executor(
                    None, self._load_replacements, current, request
                )
            except (BundleError, IndexStoreError, FileNotFoundError) as exc:
                raise RequestFailed(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from exc
            self.install(models, molecule_index, text_index)
        log.info(
            "reloaded: bundle %s, %d molecules, %s texts",
            models.bundle.bundle_id,
            molecule_index.size,
            text_index.size if text_index is not None else "no",
        )
        return pb.ReloadResponse(
            bundle_id=models.bundle.bundle_id,
            molecule_index_size=molecule_index.size,
            text_index_size=text_index.size if text_index is not None else 0,
            reload_ms=int((time.perf_counter() - started) * 1000),
        )

    def _load_replacements(
        self, current: Snapshot, request: pb.ReloadRequest
    ) -> tuple[Models, IndexStore, IndexStore | None]:
        """Build what the reload asks for beside what is loaded (blocking, off the loop)."""
        opened: list[IndexStore] = []
        try:
            if request.bundle_dir:
                models = load_models(
                    request.bundle_dir,
                    self.config.threads,
                    self.config.batching,
                    self.metrics.on_batch,
                )
                warm_up(models.embedder)
            else:
                models = current.models
            bundle = models.bundle
            if request.index_dir:
                molecule_index = open_index(request.index_dir, "molecule", bundle)
                opened.append(molecule_index)
            else:
                molecule_index = current.molecule_index
                _require_same_bundle(molecule_index, bundle)
            if request.text_index_dir:
                text_index: IndexStore | None = open_index(request.text_index_dir, "text", bundle)
                opened.append(text_index)  # type: ignore[arg-type]
            else:
                text_index = current.text_index
                if text_index is not None:
                    _require_same_bundle(text_index, bundle)
            return models, molecule_index, text_index
        except BaseException:
            for index in opened:
                index.close()
            raise


def _require_same_bundle(index: IndexStore, bundle: Bundle) -> None:
    if index.bundle_id != bundle.bundle_id:
        raise IndexStoreError(
            f"the loaded {index.kind} index {index.path} was built with bundle {index.bundle_id}, "
            f"not with the new bundle {bundle.bundle_id}: reload a matching index together "
            "with the bundle"
        )


def _batched_search(
    index: IndexStore, queries: Sequence[tuple[np.ndarray, int]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One USearch call for a batch of queries from many requests (each with its own k)."""
    k = max(q_k for _, q_k in queries)
    keys, scores = index.search(np.stack([vector for vector, _ in queries]), k)
    return [(keys[i, :q_k], scores[i, :q_k]) for i, (_, q_k) in enumerate(queries)]


def _index_info(index: IndexStore) -> pb.IndexInfo:
    return pb.IndexInfo(
        kind=index.kind,
        size=index.size,
        dim=index.dim,
        dtype=index.dtype,
        bundle_id=index.bundle_id,
        path=str(index.path),
    )
