"""The online state serving reads, written to Redis (keys in docs/contracts.md §3).

One pipelined transaction per batch of accepted events; a Redis failure is logged and
retried with exponential backoff until it succeeds, so no event is lost (the batch waits).
Commands are grouped per user and per item, so a batch costs a few commands per distinct
user rather than per event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from mode import Service
from redis.asyncio import Redis
from redis.exceptions import RedisError

from protos import events_pb2
from streams.trending import SCRIPT, Window, increments, script_args

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

    def acts(self, event_type: int, user_id: str) -> str:
        """Items the user acted on with this event type (``acts:purchase:{user}``...)."""
        return f"{self.prefix}acts:{TYPE_NAMES[event_type]}:{user_id}"

    def trending(self, window: str) -> str:
        return f"{self.prefix}trending:{window}"

    def trending_base(self, window: str) -> str:
        return f"{self.prefix}trending:{window}:base"


# EventType number -> lower-case name, as used in ``acts`` keys.
TYPE_NAMES: dict[int, str] = {
    number: name.lower() for name, number in events_pb2.EventType.items() if number
}


@dataclass(frozen=True)
class Touch:
    """An accepted event: the user acted on the item (``event_type``, an ``EventType``
    number); ``popularity`` is added to its popular and trending scores (0 adds nothing)."""

    user_id: str
    item_id: str
    timestamp_ms: int
    popularity: float
    event_type: int


@dataclass(frozen=True)
class Caps:
    """Lengths of the per-user sorted sets and of the trending sets."""

    seen: int
    acts: int
    purchases: int
    trending: int

    def acts_of(self, event_type: int) -> int:
        return self.purchases if event_type == events_pb2.PURCHASE else self.acts


@dataclass
class UserTouches:
    """One user's touches of a batch: newest time per item, overall and per event type."""

    seen: dict[str, int]
    acts: dict[int, dict[str, int]]


def group_touches(touches: Sequence[Touch]) -> dict[str, UserTouches]:
    """Touches by user, keeping the newest time of each item (what ``ZADD GT`` keeps)."""
    users: dict[str, UserTouches] = {}
    for touch in touches:
        user = users.get(touch.user_id)
        if user is None:
            user = users[touch.user_id] = UserTouches({}, {})
        ts = touch.timestamp_ms
        if user.seen.get(touch.item_id, ts) <= ts:
            user.seen[touch.item_id] = ts
        by_type = user.acts.setdefault(touch.event_type, {})
        if by_type.get(touch.item_id, ts) <= ts:
            by_type[touch.item_id] = ts
    return users


def popularity_sums(touches: Sequence[Touch]) -> dict[str, float]:
    """Item -> sum of the batch's positive popularity."""
    sums: dict[str, float] = {}
    for touch in touches:
        if touch.popularity:
            sums[touch.item_id] = sums.get(touch.item_id, 0.0) + touch.popularity
    return sums


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
        caps: Caps,
        trending: Sequence[Window],
        retry_initial_s: float,
        retry_max_s: float,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._client = client
        self.keys = keys
        self._caps = caps
        self._windows = list(trending)
        self._trending = client.register_script(SCRIPT)
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
        keys, caps = self.keys, self._caps
        async with self._client.pipeline(transaction=True) as pipe:
            for user_id, user in group_touches(touches).items():
                seen = keys.seen(user_id)
                pipe.zadd(seen, user.seen, gt=True)  # type: ignore[arg-type]
                pipe.zremrangebyrank(seen, 0, -(caps.seen + 1))
                for event_type, items in user.acts.items():
                    acts = keys.acts(event_type, user_id)
                    pipe.zadd(acts, items, gt=True)  # type: ignore[arg-type]
                    pipe.zremrangebyrank(acts, 0, -(caps.acts_of(event_type) + 1))
            for item_id, amount in popularity_sums(touches).items():
                pipe.zincrby(keys.popular(), amount, item_id)
            for window in self._windows:
                ref_ms, amounts = increments(
                    ((t.item_id, t.timestamp_ms, t.popularity) for t in touches), window.tau_ms
                )
                if amounts:
                    await self._trending(
                        keys=[keys.trending(window.name), keys.trending_base(window.name)],
                        args=script_args(window.tau_ms, ref_ms, amounts, cap=caps.trending),
                        client=pipe,
                    )
            for vector in vectors:
                pipe.hset(
                    keys.user_vector(vector.user_id),
                    mapping={
                        "vec": vector.vector,
                        "version": vector.version,
                        "ts": vector.newest_ms,
                        "at": vector.written_at_ms,
                    },
                )
            await pipe.execute()
