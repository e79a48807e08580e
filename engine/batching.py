"""The micro-batching queue: the one place where requests are merged into model batches.

Each tower (texts, molecules) gets one :class:`MicroBatcher`. Callers ``await
batcher.submit(items)`` with already prepared items (token ids, graphs); one consumer task
takes items from the head of the queue into a batch until a budget is reached (``max_items``
rows, or ``max_cost`` atoms / tokens, whichever comes first), runs the batched inference in a
worker thread (ONNX Runtime releases the GIL, so the event loop keeps accepting requests), and
hands every caller its own slice of the results.

Policy:

* **Delay.** With ``max_delay_s > 0`` a batch that is not yet full waits until its oldest item
  has been queued that long, so that near-simultaneous requests share one run. While a batch is
  running, new requests queue up anyway, so under load batches fill without any added delay;
  ``max_delay_s = 0`` dispatches whatever is queued immediately.
* **Large requests** are split across consecutive batches (never more than ``max_items`` rows per
  run); small requests queued behind them are merged into the tail batch. A single item above
  ``max_cost`` still runs, alone.
* **Order.** Items are taken first come, first served; results come back in each caller's item
  order.
* **Errors.** When a merged batch raises, each request in it is re-run alone so that the
  exception reaches only the request that caused it; the other callers get their results.
* **Cancellation.** A caller that is cancelled (client gone, deadline passed) has its items
  that were not yet dispatched removed from the queue; results of a run already under way are
  dropped. Other callers are not affected.
* ``enabled=False`` turns merging off: every request runs alone, in arrival order (the
  baseline that ``benchmarks/latency.py`` compares against).

Timing per request: ``queue_us`` from submission to the first run that carries one of its
items; ``inference_us`` the summed duration of the runs that carried its items.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosed(RuntimeError):
    """The batcher was closed before this request could run."""


@dataclass(frozen=True)
class Submitted(Generic[R]):
    """One caller's results, in its item order, with where its time went."""

    results: list[R]
    queue_us: int
    inference_us: int
    batches: int  # runs that carried at least one of its items


@dataclass(frozen=True)
class BatchStats:
    """One inference run, for metrics."""

    name: str
    items: int
    cost: int
    requests: int
    seconds: float
    ok: bool


class _Request(Generic[T, R]):
    __slots__ = (
        "items",
        "costs",
        "future",
        "results",
        "next",
        "remaining",
        "submitted_ns",
        "first_run_ns",
        "inference_ns",
        "batches",
        "dropped",
    )

    def __init__(self, items: Sequence[T], costs: list[int], future: asyncio.Future) -> None:
        self.items = items
        self.costs = costs
        self.future = future
        self.results: list[R | None] = [None] * len(items)
        self.next = 0  # first item not yet taken into a batch
        self.remaining = len(items)  # items without a result yet
        self.submitted_ns = time.perf_counter_ns()
        self.first_run_ns: int | None = None
        self.inference_ns = 0
        self.batches = 0
        self.dropped = False  # cancelled or failed: its untaken items leave the queue


@dataclass
class _Slice(Generic[T, R]):
    request: _Request[T, R]
    start: int  # in the request
    stop: int
    offset: int  # in the batch


class MicroBatcher(Generic[T, R]):
    """An asyncio micro-batcher around a synchronous batched ``infer(items) -> results``."""

    def __init__(
        self,
        infer: Callable[[Sequence[T]], Sequence[R]],
        *,
        cost: Callable[[T], int] | None = None,
        max_items: int = 64,
        max_cost: int | None = None,
        max_delay_s: float = 0.0,
        enabled: bool = True,
        executor: Executor | None = None,
        name: str = "batcher",
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        if max_cost is not None and max_cost < 1:
            raise ValueError(f"max_cost must be >= 1 or None, got {max_cost}")
        if max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, got {max_delay_s}")
        self.name = name
        self.enabled = enabled
        self.max_items = max_items
        self.max_cost = max_cost
        self.max_delay_s = max_delay_s
        self._infer = infer
        self._cost = cost
        self._on_batch = on_batch
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"molret-{name}"
        )
        self._queue: deque[_Request[T, R]] = deque()
        self._queued_items = 0
        self._queued_cost = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False

    # ---- public ------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Items waiting for a batch (not counting the run under way)."""
        return self._queued_items

    async def submit(self, items: Sequence[T]) -> Submitted[R]:
        """Queue ``items``; return their results once every one has been through a batch."""
        if self._closing:
            raise BatcherClosed(f"{self.name} batcher is closed")
        if not items:
            return Submitted([], 0, 0, 0)
        self._ensure_started()
        assert self._wakeup is not None
        costs = [int(self._cost(item)) for item in items] if self._cost else [1] * len(items)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        request: _Request[T, R] = _Request(items, costs, future)
        self._queue.append(request)
        self._queued_items += len(items)
        self._queued_cost += sum(costs)
        self._wakeup.set()
        try:
            await future
        except asyncio.CancelledError:
            self._drop(request)
            raise
        except BaseException:
            self._drop(request)
            raise
        queue_ns = (request.first_run_ns or request.submitted_ns) - request.submitted_ns
        return Submitted(
            list(request.results),  # type: ignore[arg-type]
            queue_ns // 1000,
            request.inference_ns // 1000,
            request.batches,
        )

    async def close(self, drain: bool = True) -> None:
        """Stop accepting requests; with ``drain`` finish the queued ones first."""
        self._closing = True
        if self._task is not None:
            if not drain:
                self._fail_all(BatcherClosed(f"{self.name} batcher is closed"))
            assert self._wakeup is not None
            self._wakeup.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._fail_all(BatcherClosed(f"{self.name} batcher is closed"))
        if self._own_executor:
            self._executor.shutdown(wait=False)
        self._closed = True

    # ---- queue bookkeeping -------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._consume(), name=f"molret-{self.name}-batcher"
            )

    def _drop(self, request: _Request[T, R]) -> None:
        """Take a finished-with-error or cancelled request's untaken items off the queue."""
        if request.dropped:
            return
        request.dropped = True
        self._queued_items -= len(request.items) - request.next
        self._queued_cost -= sum(request.costs[request.next :])
        request.next = len(request.items)

    def _fail_all(self, exc: BaseException) -> None:
        while self._queue:
            request = self._queue.popleft()
            self._drop(request)
            if not request.future.done():
                request.future.set_exception(exc)

    def _full(self) -> bool:
        if not self.enabled:
            return True
        if self._queued_items >= self.max_items:
            return True
        return self.max_cost is not None and self._queued_cost >= self.max_cost

    def _take(self) -> tuple[list[T], list[_Slice[T, R]]]:
        """Items for the next batch, first come first served, within the budget."""
        batch: list[T] = []
        slices: list[_Slice[T, R]] = []
        cost = 0
        while self._queue:
            request = self._queue[0]
            if request.dropped or request.future.done():
                self._queue.popleft()
                self._drop(request)
                continue
            if not self.enabled:
                if batch:
                    break
                start = request.next
                batch.extend(request.items[start:])
                cost += sum(request.costs[start:])
                request.next = len(request.items)
                slices.append(_Slice(request, start, request.next, 0))
                self._queue.popleft()
                break
            start = request.next
            stop = start
            while stop < len(request.items) and len(batch) < self.max_items:
                item_cost = request.costs[stop]
                if batch and self.max_cost is not None and cost + item_cost > self.max_cost:
                    break
                batch.append(request.items[stop])
                cost += item_cost
                stop += 1
            if stop > start:
                slices.append(_Slice(request, start, stop, len(batch) - (stop - start)))
                request.next = stop
            if stop < len(request.items):
                break  # the batch is full; the rest of this request leads the next one
            self._queue.popleft()
        self._queued_items -= len(batch)
        self._queued_cost -= cost
        return batch, slices

    # ---- the consumer ------------------------------------------------------------------

    async def _consume(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if self._queued_items <= 0:
                self._queue = deque(r for r in self._queue if not r.dropped)
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.max_delay_s > 0 and not self._full() and not self._closing:
                oldest = next((r for r in self._queue if not r.dropped), None)
                if oldest is not None:
                    deadline = oldest.submitted_ns / 1e9 + self.max_delay_s
                    while not self._full() and not self._closing:
                        remaining = deadline - time.perf_counter_ns() / 1e9
                        if remaining <= 0:
                            break
                        self._wakeup.clear()
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(self._wakeup.wait(), remaining)
            batch, slices = self._take()
            if batch:
                await self._run(loop, batch, slices)

    async def _run(
        self, loop: asyncio.AbstractEventLoop, batch: list[T], slices: list[_Slice[T, R]]
    ) -> None:
        started = time.perf_counter_ns()
        for piece in slices:
            if piece.request.first_run_ns is None:
                piece.request.first_run_ns = started
        requests = {id(piece.request) for piece in slices}
        cost = sum(sum(p.request.costs[p.start : p.stop]) for p in slices)
        try:
            results = await loop.run_in_executor(self._executor, self._checked_infer, batch)
        except Exception as exc:
            self._report(len(batch), cost, len(requests), started, ok=False)
            if len(requests) == 1:
                self._fail(slices[0].request, exc)
                return
            # Re-run each request's slice alone: only the culprit sees the exception.
            by_request: dict[int, list[_Slice[T, R]]] = {}
            for piece in slices:
                by_request.setdefault(id(piece.request), []).append(piece)
            for pieces in by_request.values():
                items = [x for p in pieces for x in batch[p.offset : p.offset + p.stop - p.start]]
                alone: list[_Slice[T, R]] = []
                offset = 0
                for p in pieces:
                    alone.append(_Slice(p.request, p.start, p.stop, offset))
                    offset += p.stop - p.start
                await self._run(loop, items, alone)
            return
        finished = time.perf_counter_ns()
        self._report(len(batch), cost, len(requests), started, ok=True, finished=finished)
        for piece in slices:
            request = piece.request
            request.inference_ns += finished - started
            request.batches += 1
            if request.future.done():
                continue  # cancelled while running: drop its results
            n = piece.stop - piece.start
            request.results[piece.start : piece.stop] = results[piece.offset : piece.offset + n]
            request.remaining -= n
            if request.remaining == 0:
                request.future.set_result(None)

    def _checked_infer(self, batch: list[T]) -> list[R]:
        results = list(self._infer(batch))
        if len(results) != len(batch):
            raise RuntimeError(
                f"{self.name} inference returned {len(results)} results for {len(batch)} items"
            )
        return results

    def _fail(self, request: _Request[T, R], exc: BaseException) -> None:
        self._drop(request)
        if not request.future.done():
            request.future.set_exception(exc)

    def _report(
        self,
        items: int,
        cost: int,
        requests: int,
        started: int,
        ok: bool,
        finished: int | None = None,
    ) -> None:
        if self._on_batch is None:
            return
        end = finished if finished is not None else time.perf_counter_ns()
        with contextlib.suppress(Exception):  # metrics never break serving
            self._on_batch(BatchStats(self.name, items, cost, requests, (end - started) / 1e9, ok))
