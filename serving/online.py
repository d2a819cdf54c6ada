"""Reads of the online state the streams worker writes to Redis (docs/contracts.md §3)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import RedisError

from serving.errors import StoreUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserState:
    """A user's vector (None if there is none or it is unusable), its model version and
    the ids of the most recently seen items."""

    vector: np.ndarray | None
    version: str | None
    seen: tuple[str, ...]


def decode_vector(raw: bytes | None, dim: int) -> np.ndarray | None:
    """float32 little-endian bytes as a [dim] vector; None when absent, mis-sized or not finite."""
    if raw is None:
        return None
    if len(raw) != 4 * dim:
        return None
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.isfinite(vector).all() or not vector.any():
        return None
    return vector


class OnlineStore:
    """User vectors, seen items and popular items under one key prefix."""

    def __init__(self, client: Redis, *, prefix: str, seen_limit: int, dim: int,
                 coalesce: bool = True) -> None:
        self._client = client
        self._prefix = prefix
        self._seen_limit = seen_limit
        self._dim = dim
        self._coalesce = coalesce
        # Reads asked for in the same event-loop turn, answered by one pipeline.
        self._pending: list[tuple[str, asyncio.Future[UserState]]] = []
        self._tasks: set[asyncio.Task[None]] = set()  # flushes in flight (kept referenced)

    async def user(self, user_id: str) -> UserState:
        """The user's vector, its version and recent items, in one round trip.

        Calls made in the same event-loop turn (concurrent requests) share one pipeline:
        one write and one read on the socket for all of them instead of one each.
        """
        if not self._coalesce:
            return (await self.users([user_id]))[0]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[UserState] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((user_id, future))
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._answer(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, batch: list[tuple[str, asyncio.Future[UserState]]]) -> None:
        try:
            states = await self.users([user_id for user_id, _ in batch])
        except Exception as error:  # every waiting caller gets it (StoreUnavailable)
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), state in zip(batch, states, strict=True):
            if not future.done():  # a caller past its deadline has stopped waiting
                future.set_result(state)

    async def users(self, user_ids: list[str]) -> list[UserState]:
        """The state of every user in `user_ids`, in one pipelined round trip."""
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for user_id in user_ids:
                    pipe.hmget(f"{self._prefix}uv:{user_id}", ["vec", "version"])
                    if self._seen_limit:
                        pipe.zrevrange(f"{self._prefix}seen:{user_id}", 0, self._seen_limit - 1)
                replies: list[Any] = await pipe.execute()
        except (RedisError, OSError) as error:
            raise StoreUnavailable(f"Redis is unavailable: {error}") from error
        step = 2 if self._seen_limit else 1
        return [
            self._state(user_id, replies[n * step], replies[n * step + 1] if step == 2 else [])
            for n, user_id in enumerate(user_ids)
        ]

    def _state(self, user_id: str, vector_reply: Any, seen_reply: Any) -> UserState:
        raw_vector, raw_version = vector_reply
        seen = tuple(item.decode() for item in seen_reply)
        version = raw_version.decode() if raw_vector is not None and raw_version is not None else None
        vector = decode_vector(raw_vector, self._dim)
        if raw_vector is not None and vector is None:
            log.warning(
                "user %s has an unusable vector (%s bytes, expected %s float32); not using it",
                user_id, len(raw_vector), self._dim,
            )
        return UserState(vector=vector, version=version, seen=seen)

    async def popular(self, count: int) -> list[tuple[str, float]]:
        """The `count` most popular items with their scores, most popular first."""
        try:
            pairs: list[Any] = await self._client.zrevrange(
                f"{self._prefix}popular", 0, count - 1, withscores=True
            )
        except (RedisError, OSError) as error:
            raise StoreUnavailable(f"Redis is unavailable: {error}") from error
        return [(item.decode(), float(score)) for item, score in pairs]
