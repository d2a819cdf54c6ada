"""The online state serving reads, written to Redis (keys in docs/contracts.md §3).

One pipelined transaction per batch of accepted events; a Redis failure is logged and
retried with exponential backoff until it succeeds, so no event is lost (the batch waits).

Effects are applied once per event although a crash or a rebalance makes the worker read
records again: the transaction also records, per partition of the events topic, the
newest offset whose effects it holds (``applied``), and a record at or below that offset
adds nothing. The check and the write are one optimistic transaction (``WATCH``), so a
worker that lost a partition and still writes cannot apply what the new owner applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mode import Service
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, WatchError

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

    def applied(self, group: str) -> str:
        return f"{self.prefix}applied:{group}"


@dataclass(frozen=True)
class Touch:
    """An accepted event: the user saw the item; ``popularity`` is added to its trending
    score (0 adds nothing). ``partition`` and ``offset`` locate its record in the events
    topic."""

    user_id: str
    item_id: str
    timestamp_ms: int
    popularity: float
    partition: int
    offset: int


@dataclass(frozen=True)
class UserVector:
    """A user's new vector (float32 little-endian bytes) and what it was made from."""

    user_id: str
    vector: bytes
    version: str
    newest_ms: int
    written_at_ms: int


def unapplied(
    touches: Sequence[Touch], vectors: Sequence[UserVector], applied: dict[int, int]
) -> tuple[list[Touch], list[UserVector], dict[int, int]]:
    """The touches above their partition's applied offset, the vectors of their users, and
    the new applied offset of each partition they come from."""
    fresh = [t for t in touches if t.offset > applied.get(t.partition, -1)]
    users = {t.user_id for t in fresh}
    newest: dict[int, int] = {}
    for touch in fresh:
        newest[touch.partition] = max(newest.get(touch.partition, -1), touch.offset)
    return fresh, [v for v in vectors if v.user_id in users], newest


class OnlineState(Service):
    """Writes batches of :class:`Touch` and :class:`UserVector`; owns the Redis client.
    ``group`` (the consumer group) and ``source_topic`` (the events topic) name the
    applied offsets."""

    def __init__(
        self,
        client: Redis,
        *,
        keys: RedisKeys,
        group: str,
        source_topic: str,
        seen_length: int,
        retry_initial_s: float,
        retry_max_s: float,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._client = client
        self.keys = keys
        self._applied_key = keys.applied(group)
        self._source_topic = source_topic
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

    async def write(self, touches: Sequence[Touch], vectors: Sequence[UserVector]) -> int:
        """Apply a batch, retrying on any Redis error until it is applied; returns how many
        touches were new (the others had been applied before)."""
        if not touches:
            return 0
        delay = self._retry_initial_s
        attempt = 1
        while True:
            try:
                return await self._write_once(touches, vectors)
            except WatchError:
                continue  # another worker moved the applied offsets: check again
            except RedisError as error:
                log.warning(
                    "redis write of %s events failed (attempt %s): %s; retrying in %.2f s",
                    len(touches), attempt, error, delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max_s)
            attempt += 1

    async def applied(self) -> dict[int, int]:
        """Partition of the events topic -> newest offset whose effects are applied."""
        return self._parse_applied(await self._client.hgetall(self._applied_key))

    def _parse_applied(self, fields: Mapping[bytes | str, bytes | str]) -> dict[int, int]:
        applied = {}
        for field, offset in fields.items():
            name = field.decode() if isinstance(field, bytes) else field
            topic, _, partition = name.rpartition(":")
            if topic == self._source_topic:
                applied[int(partition)] = int(offset)
        return applied

    async def _write_once(self, touches: Sequence[Touch], vectors: Sequence[UserVector]) -> int:
        async with self._client.pipeline(transaction=True) as pipe:
            await pipe.watch(self._applied_key)
            applied = self._parse_applied(await pipe.hgetall(self._applied_key))
            fresh, fresh_vectors, newest = unapplied(touches, vectors, applied)
            if not fresh:
                return 0
            pipe.multi()
            self._queue_effects(pipe, fresh, fresh_vectors)
            pipe.hset(
                self._applied_key,
                mapping={f"{self._source_topic}:{p}": offset for p, offset in newest.items()},
            )
            await pipe.execute()
            return len(fresh)

    def _queue_effects(
        self, pipe: Pipeline, touches: Sequence[Touch], vectors: Sequence[UserVector]
    ) -> None:
        """The commands of one batch's effects, queued in the open transaction."""
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
