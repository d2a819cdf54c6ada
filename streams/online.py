"""The online state serving reads, written to Redis (keys in docs/contracts.md §3).

One pipelined transaction per batch of accepted events; a Redis failure is logged and
retried with exponential backoff until it succeeds, so no event is lost (the batch waits).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from mode import Service
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RedisKeys:
    """Key names under one prefix."""

    prefix: str

    def user_vector(self, user_id: str) -> str:
        return f"{self.prefix}uv:{user_id}"

    def seen(self, user_id: str) -> str:
        return f"{self.prefix}seen:{user_id}"

    def popular(self) -> str:
        return f"{self.prefix}popular"


@dataclass(frozen=True)
class Touch:
    """An accepted event: the user saw the item; ``popularity`` is added to its trending
    score (0 adds nothing)."""

    user_id: str
    item_id: str
    timestamp_ms: int
    popularity: float


@dataclass(frozen=True)
class UserVector:
    """A user's new vector (float32 little-endian bytes) and what it was made from."""

    user_id: str
    vector: bytes
    version: str
    newest_ms: int
    written_at_ms: int


class OnlineState(Service):
    """Writes batches of :class:`Touch` and :class:`UserVector`; owns the Redis client."""

    def __init__(
        self,
        client: Redis,
        *,
        keys: RedisKeys,
        seen_length: int,
        retry_initial_s: float,
        retry_max_s: float,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._client = client
        self.keys = keys
        self._seen_length = seen_length
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s

    async def on_start(self) -> None:
        try:
            await self._client.ping()
        except RedisError as error:
            log.warning("redis is not reachable yet (%s); writes will retry", error)

    async def on_shutdown(self) -> None:
        await self._client.aclose()

    async def write(self, touches: Sequence[Touch], vectors: Sequence[UserVector]) -> None:
        """Apply a batch, retrying on any Redis error until it is applied."""
        if not touches and not vectors:
            return
        delay = self._retry_initial_s
        attempt = 1
        while True:
            try:
                await self._write_once(touches, vectors)
                return
            except RedisError as error:
                log.warning(
                    "redis write of %s events failed (attempt %s): %s; retrying in %.2f s",
                    len(touches), attempt, error, delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max_s)
            attempt += 1

    async def _write_once(self, touches: Sequence[Touch], vectors: Sequence[UserVector]) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            for touch in touches:
                seen = self.keys.seen(touch.user_id)
                pipe.zadd(seen, {touch.item_id: touch.timestamp_ms}, gt=True)
                if touch.popularity:
                    pipe.zincrby(self.keys.popular(), touch.popularity, touch.item_id)
            for user_id in {touch.user_id for touch in touches}:
                pipe.zremrangebyrank(self.keys.seen(user_id), 0, -(self._seen_length + 1))
            for vector in vectors:
                pipe.hset(
                    self.keys.user_vector(vector.user_id),
                    mapping={
                        "vec": vector.vector,
                        "version": vector.version,
                        "ts": vector.newest_ms,
                        "at": vector.written_at_ms,
                    },
                )
            await pipe.execute()
