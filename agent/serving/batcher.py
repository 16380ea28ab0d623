"""Dynamic batching (Triton's meaning): gather a version's requests into one forward pass.

A batch closes at `max_batch_size` rows, or `max_queue_delay_ms` after its oldest
request arrived, whichever comes first; while one batch runs on the worker thread
the next one gathers. The results are split back to each request by row.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Forward = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


class Retired(RuntimeError):
    """The version was swapped out and its batcher closed; the caller routes again."""


class Timing:
    """Where a batch's time went (Triton's compute input, infer and output)."""

    __slots__ = ("infer_s", "input_s", "output_s")

    def __init__(self, input_s: float, infer_s: float, output_s: float) -> None:
        self.input_s = input_s
        self.infer_s = infer_s
        self.output_s = output_s


OnBatch = Callable[[int, Timing], None]


class Done:
    """What a request gets back: its rows of every output, its time queued and its batch's timing."""

    __slots__ = ("outputs", "queue_s", "timing")

    def __init__(self, outputs: dict[str, np.ndarray], queue_s: float, timing: Timing) -> None:
        self.outputs = outputs
        self.queue_s = queue_s
        self.timing = timing


class _Work:
    __slots__ = ("arrays", "future", "rows", "t_in")

    def __init__(self, arrays: Mapping[str, np.ndarray], rows: int, future: asyncio.Future[Done]) -> None:
        self.arrays = arrays
        self.rows = rows
        self.future = future
        self.t_in = time.perf_counter()


class Batcher:
    """One per served version: a queue, a gathering task, and forward passes on a worker thread."""

    def __init__(
        self,
        forward: Forward,
        executor: concurrent.futures.Executor,
        max_batch_size: int,
        max_queue_delay_ms: float,
        on_batch: OnBatch,
    ) -> None:
        self.forward = forward
        self.executor = executor
        self.max_batch_size = max(1, max_batch_size)
        self.delay_s = max(0.0, max_queue_delay_ms) / 1000.0
        self.on_batch = on_batch
        self.queue: asyncio.Queue[_Work | None] = asyncio.Queue()
        self.closed = False
        self._carry: _Work | None = None
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    def submit(self, arrays: Mapping[str, np.ndarray], rows: int) -> asyncio.Future[Done]:
        """Queue checked inputs; the future resolves with this request's outputs."""
        if self.closed:
            raise Retired("this version is no longer served")
        future: asyncio.Future[Done] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(_Work(arrays, rows, future))
        return future

    async def close(self) -> None:
        """Stop taking work, finish what is queued (in-flight requests end on this version)."""
        self.closed = True
        self.queue.put_nowait(None)
        await self._task

    async def _gather(self) -> tuple[list[_Work], bool]:
        first = self._carry or await self.queue.get()
        self._carry = None
        if first is None:
            return [], True
        batch, rows = [first], first.rows
        deadline = first.t_in + self.delay_s
        while rows < self.max_batch_size:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            if item is None:
                return batch, True
            if rows + item.rows > self.max_batch_size:
                self._carry = item
                break
            batch.append(item)
            rows += item.rows
        return batch, False

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop or self._carry:
            batch, ended = await self._gather()
            stop = stop or ended
            live = [w for w in batch if not w.future.cancelled()]
            if live:
                await self._execute(loop, live)

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Work]) -> None:
        start = time.perf_counter()
        rows = sum(w.rows for w in batch)
        try:
            merged = _concat([w.arrays for w in batch])
            merged_at = time.perf_counter()
            outputs = await loop.run_in_executor(self.executor, self.forward, merged)
        except Exception as exc:
            if len(batch) > 1:  # isolate the request that broke the batch: run each alone
                for work in batch:
                    await self._execute(loop, [work])
                return
            _resolve(batch[0].future, exc)
            return
        end = time.perf_counter()
        offset = 0
        parts = []
        for work in batch:
            parts.append({k: v[offset : offset + work.rows] for k, v in outputs.items()})
            offset += work.rows
        timing = Timing(merged_at - start, end - merged_at, time.perf_counter() - end)
        self.on_batch(rows, timing)
        for work, part in zip(batch, parts, strict=True):
            _resolve(work.future, Done(part, start - work.t_in, timing))


def _concat(parts: list[Mapping[str, np.ndarray]]) -> Mapping[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)
