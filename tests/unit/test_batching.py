"""The micro-batcher with a fake inference function (the integration tests use the real model)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from molret.engine.batching import BatcherClosed, BatchStats, MicroBatcher


class Recorder:
    """A batched 'model': doubles numbers, records each batch, can block or fail."""

    def __init__(self, delay_s: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.gate: threading.Event | None = None

    def __call__(self, items: Sequence[int]) -> list[int]:
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(list(items))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot handle {self.fail_on}")
        return [2 * x for x in items]


def run(coro):  # noqa: ANN001, ANN201 - tiny helper
    return asyncio.run(coro)


def test_results_in_order_and_merged_into_one_batch() -> None:
    model = Recorder()

    async def main() -> list[list[int]]:
        batcher = MicroBatcher(model, max_items=100, max_delay_s=0.05)
        outs = await asyncio.gather(
            batcher.submit([1, 2, 3]), batcher.submit([4]), batcher.submit([5, 6])
        )
        await batcher.close()
        return [out.results for out in outs]

    assert run(main()) == [[2, 4, 6], [8], [10, 12]]
    assert model.batches == [[1, 2, 3, 4, 5, 6]]


def test_budget_on_items_splits_large_requests() -> None:
    model = Recorder()

    async def main() -> tuple[list[int], int]:
        batcher = MicroBatcher(model, max_items=4, max_delay_s=0.0)
        out = await batcher.submit(list(range(10)))
        await batcher.close()
        return out.results, out.batches

    results, batches = run(main())
    assert results == [2 * x for x in range(10)]
    assert batches == 3
    assert [len(b) for b in model.batches] == [4, 4, 2]


def test_budget_on_cost() -> None:
    model = Recorder()

    async def main() -> list[int]:
        batcher = MicroBatcher(model, cost=lambda x: x, max_items=100, max_cost=10, max_delay_s=0)
        out = await batcher.submit([4, 4, 4, 30, 1])
        await batcher.close()
        return out.results

    assert run(main()) == [8, 8, 8, 60, 2]
    # 4+4 fits, a third 4 would exceed 10; 30 alone exceeds the budget but still runs, alone.
    assert model.batches == [[4, 4], [4], [30], [1]]


def test_zero_delay_dispatches_immediately_and_queue_fills_while_running() -> None:
    model = Recorder(delay_s=0.05)

    async def main() -> None:
        batcher = MicroBatcher(model, max_items=100, max_delay_s=0.0)
        first = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0.01)  # the first batch is running now
        rest = [asyncio.ensure_future(batcher.submit([x])) for x in (2, 3, 4)]
        await asyncio.gather(first, *rest)
        await batcher.close()

    run(main())
    assert model.batches == [[1], [2, 3, 4]]


def test_exception_reaches_only_the_culprit() -> None:
    model = Recorder(fail_on=13)

    async def main() -> list[object]:
        batcher = MicroBatcher(model, max_items=100, max_delay_s=0.05)
        outs = await asyncio.gather(
            batcher.submit([1, 2]),
            batcher.submit([13, 3]),
            batcher.submit([4]),
            return_exceptions=True,
        )
        # The batcher keeps working after a failure.
        after = await batcher.submit([7])
        await batcher.close()
        return [*outs, after.results]

    good, bad, other, after = run(main())
    assert good.results == [2, 4]  # type: ignore[union-attr]
    assert isinstance(bad, ValueError) and "13" in str(bad)
    assert other.results == [8]  # type: ignore[union-attr]
    assert after == [14]


def test_cancelled_caller_does_not_break_others() -> None:
    model = Recorder()
    model.gate = threading.Event()

    async def main() -> tuple[list[int], list[int], int]:
        batcher = MicroBatcher(model, max_items=2, max_delay_s=0.0)
        running = asyncio.ensure_future(batcher.submit([1]))  # blocks the worker on the gate
        await asyncio.sleep(0.02)
        doomed = asyncio.ensure_future(batcher.submit([100, 101, 102, 103]))
        survivor = asyncio.ensure_future(batcher.submit([5, 6]))
        await asyncio.sleep(0.01)
        assert batcher.queue_depth == 6
        doomed.cancel()
        await asyncio.sleep(0)
        depth = batcher.queue_depth
        model.gate.set()
        first, second = await asyncio.gather(running, survivor)
        with pytest.raises(asyncio.CancelledError):
            await doomed
        await batcher.close()
        return first.results, second.results, depth

    first, second, depth = run(main())
    assert (first, second, depth) == ([2], [10, 12], 2)
    assert all(x < 100 for batch in model.batches for x in batch)


def test_timings_and_stats() -> None:
    stats: list[BatchStats] = []
    model = Recorder(delay_s=0.02)

    async def main() -> tuple[int, int]:
        batcher = MicroBatcher(model, max_items=8, max_delay_s=0.0, on_batch=stats.append)
        out = await batcher.submit([1, 2, 3])
        await batcher.close()
        return out.queue_us, out.inference_us

    queue_us, inference_us = run(main())
    assert inference_us >= 20_000
    assert 0 <= queue_us < inference_us
    assert len(stats) == 1 and stats[0].items == 3 and stats[0].requests == 1 and stats[0].ok


def test_disabled_runs_each_request_alone() -> None:
    model = Recorder()

    async def main() -> list[list[int]]:
        batcher = MicroBatcher(model, max_items=2, max_delay_s=0.05, enabled=False)
        outs = await asyncio.gather(batcher.submit([1, 2, 3]), batcher.submit([4]))
        await batcher.close()
        return [out.results for out in outs]

    assert run(main()) == [[2, 4, 6], [8]]
    assert sorted(model.batches) == [[1, 2, 3], [4]]


def test_empty_submit_and_closed_batcher() -> None:
    model = Recorder()

    async def main() -> None:
        batcher = MicroBatcher(model)
        assert (await batcher.submit([])).results == []
        await batcher.close()
        with pytest.raises(BatcherClosed):
            await batcher.submit([1])

    run(main())
    assert model.batches == []


def test_close_drains_queued_requests() -> None:
    model = Recorder(delay_s=0.02)

    async def main() -> list[list[int]]:
        batcher = MicroBatcher(model, max_items=1, max_delay_s=0.0)
        pending = [asyncio.ensure_future(batcher.submit([x])) for x in range(3)]
        await asyncio.sleep(0.005)
        await batcher.close(drain=True)
        return [(await p).results for p in pending]

    assert run(main()) == [[0], [2], [4]]


def test_wrong_result_count_is_an_error() -> None:
    async def main() -> None:
        batcher = MicroBatcher(lambda items: [0], max_delay_s=0.0)
        with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
            await batcher.submit([1, 2])
        await batcher.close()

    run(main())
