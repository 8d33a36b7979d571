"""Micro-batching: requests that arrive within a few milliseconds share one batched beam search.

One asyncio task owns the queue. It waits for a first request, keeps collecting for up to ``max_wait_ms`` (or
until ``max_batch`` requests), then runs a single ``Recommender.recommend_batch`` in a worker thread so the event
loop keeps accepting requests meanwhile; those queue up and form the next batch. Only this task ever calls the
model, so decodes never run concurrently.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sidrec.serve.service import Recommendation, Recommender


@dataclass
class _Pending:
    history: list[str]
    k: int
    exclude_history: bool
    future: asyncio.Future


class MicroBatcher:
    """Collects concurrent recommendation requests and answers them with one decode per batch.

    Args:
        recommender: the model and catalogue to serve.
        max_batch: most requests decoded together.
        max_wait_ms: how long the first request of a batch waits for company.

    Example:
        >>> batcher = MicroBatcher(Recommender.from_run("runs/ml-100k"))  # doctest: +SKIP
        >>> await batcher.start()  # doctest: +SKIP
        >>> recs = await batcher.submit(["50", "172"], k=10, exclude_history=True)  # doctest: +SKIP
    """

    def __init__(self, recommender: Recommender, max_batch: int = 256, max_wait_ms: float = 5.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.recommender = recommender
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the batching task; requests still queued are cancelled."""
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        while not self._queue.empty():
            self._queue.get_nowait().future.cancel()
        self._task = None

    async def submit(self, history: list[str], k: int, exclude_history: bool) -> list[Recommendation]:
        """Queue one request and wait for its recommendations."""
        return (await self.submit_many([(history, k, exclude_history)]))[0]

    async def submit_many(self, requests: list[tuple[list[str], int, bool]]) -> list[list[Recommendation]]:
        """Queue several requests at once (they land in the same batch when it has room)."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        loop = asyncio.get_running_loop()
        pending = [_Pending(h, k, ex, loop.create_future()) for h, k, ex in requests]
        for p in pending:
            self._queue.put_nowait(p)
        return list(await asyncio.gather(*(p.future for p in pending)))

    async def _collect(self) -> list[_Pending]:
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():  # take what is already queued without waiting
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            # A client that disconnected cancels its future; there is no one left to decode for.
            batch = [p for p in await self._collect() if not p.future.cancelled()]
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(
                    self.recommender.recommend_batch,
                    [p.history for p in batch],
                    [p.k for p in batch],
                    [p.exclude_history for p in batch],
                )
            except Exception as e:  # every request of the batch gets the error instead of hanging
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            for p, recs in zip(batch, results):
                if not p.future.done():
                    p.future.set_result(recs)
