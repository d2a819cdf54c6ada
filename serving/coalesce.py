"""Calls made in the same event-loop turn, answered together by one batched call.

Concurrent requests reach the same step (a Redis read, an index search) within one turn
of the event loop; batching them there costs one round trip or one FAISS call for all
instead of one each, with no added wait: the batch goes out as soon as the loop has run
every callback that was ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")


class Coalescer(Generic[A, R]):
    """``await coalescer(arg)`` answers with ``batch([..., arg, ...])[i]``.

    `batch` must return one result per argument, in order. If it raises, every caller
    of that batch gets the exception.
    """

    def __init__(self, batch: Callable[[list[A]], Awaitable[list[R]]]) -> None:
        self._batch = batch
        self._pending: list[tuple[A, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()  # batches in flight (kept referenced)

    async def __call__(self, arg: A) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((arg, future))
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._answer(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, batch: list[tuple[A, asyncio.Future[R]]]) -> None:
        try:
            results = await self._batch([arg for arg, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
        except Exception as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # a caller past its deadline has stopped waiting
                future.set_result(result)
