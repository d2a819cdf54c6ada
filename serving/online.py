"""Reads of the online state the streams worker writes to Redis (docs/contracts.md §3)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from contracts.online import (
    EVENT_TYPES,
    READ_USERS_SCRIPT,
    RedisKeys,
    VectorFormatError,
    decode_base_ms,
    decode_vector,
    decayed_counts,
    read_users_args,
)
from serving import cluster
from serving.coalesce import Coalescer
from serving.errors import StoreUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserState:
    """A user's vector (None if there is none or it is unusable), its model version, the
    ids of the most recently seen items (newest first), and the items the user must not
    be shown again (interactions of the excluded event types)."""

    vector: np.ndarray | None
    version: str | None
    seen: tuple[str, ...]
    excluded: frozenset[str] = frozenset()


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


async def send_packed(client: Redis, packed: bytes, count: int) -> list[Any]:
    """The replies to `count` commands packed in `packed`, sent together on one pooled
    connection (one round trip), retried as the client retries its commands. An error
    reply is returned as its ResponseError, every reply is read, so the connection stays
    in step; a connection left mid-reply (a lost socket, a cancelled call) is
    disconnected by the connection itself before it goes back to the pool."""
    pool = client.connection_pool
    connection = await pool.get_connection()
    try:
        async def round_trip() -> list[Any]:
            await connection.send_packed_command(packed)
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(await connection.read_response())
                except ResponseError as error:
                    replies.append(error)
            return replies

        async def disconnect(_: BaseException) -> None:
            await connection.disconnect()

        return await connection.retry.call_with_retry(round_trip, disconnect)
    finally:
        await pool.release(connection)


def packed_head(script: str, fixed: Sequence[bytes]) -> tuple[bytes, int]:
    """The RESP of ``EVALSHA <sha of script> 0 <fixed...>`` without its array header,
    and how many arguments it holds."""
    words = [b"EVALSHA", hashlib.sha1(script.encode()).hexdigest().encode(), b"0", *fixed]
    return b"".join(bulk(word) for word in words), len(words)


class OnlineStore:
    """User vectors, seen items and popular items under one key prefix.

    The user read is the one Redis call of every Recommend, so it skips the client's
    command layer: the script call is packed once up to the user ids and sent on a
    pooled connection, with the client's retries and timeouts. Against ``evalsha``
    through the command layer that saves ~20 µs of client CPU a call: 1.3× less for one
    user (most calls), 1.15× for eight (``bench/redis_read.py``). On a Redis Cluster the
    script is called once per slot of the batch (serving.cluster.read_users).
    """

    def __init__(self, client: Redis, *, prefix: str, seen_limit: int,
                 coalesce: bool = True, exclude_types: tuple[str, ...] = EVENT_TYPES,
                 trending_window: str = "", trending_tau_s: float | None = None) -> None:
        """`exclude_types`: the event types whose items a user is not shown again (read
        from ``sr:acts:{type}``; with every type, ``sr:seen`` too). `trending_window`:
        the ``sr:trending:{window}`` that ranks cold-start items (``sr:popular`` when
        empty or while that window holds nothing); `trending_tau_s`: its decay time
        constant, as the streams worker writes it, which turns its scores into counts."""
        keys = RedisKeys(prefix)
        self._client = client
        self._user_vectors = keys.user_vectors
        self._seen_limit = seen_limit
        self._exclude_types = tuple(dict.fromkeys(exclude_types))
        self._seen_excluded = set(self._exclude_types) == set(EVENT_TYPES)
        if trending_window and not (trending_tau_s and trending_tau_s > 0):
            raise ValueError(f"trending window {trending_window!r} needs its decay time constant")
        self._trending_window = trending_window
        self._trending_key = keys.trending(trending_window)
        self._trending_base_key = keys.trending_base(trending_window)
        self._popular_key = keys.popular()
        self._trending_tau_ms = (trending_tau_s or 0.0) * 1000.0
        # Reads asked for in the same event-loop turn (concurrent requests) share one
        # pipeline: one write and one read on the socket for all of them.
        self._coalesced: Coalescer[str, UserState] | None = Coalescer(self.users) if coalesce else None
        fixed = read_users_args(keys, seen_limit=seen_limit, types=self._exclude_types)
        self._fixed = fixed
        self._head, self._head_words = packed_head(READ_USERS_SCRIPT,
                                                    [word.encode() for word in fixed])

    async def user(self, user_id: str) -> UserState:
        """The user's vector, its version and recent items, in one round trip."""
        if self._coalesced is None:
            return (await self.users([user_id]))[0]
        return await self._coalesced(user_id)

    async def users(self, user_ids: list[str]) -> list[UserState]:
        """The state of every user in `user_ids`, in one round trip (one script call)."""
        try:
            replies = await self.replies(user_ids)
        except cluster.STORE_ERRORS as error:
            raise StoreUnavailable(f"Redis is unavailable: {error}") from error
        return [self._state(user_id, *reply) for user_id, reply in zip(user_ids, replies, strict=True)]

    async def replies(self, user_ids: list[str]) -> list[Any]:
        """The script's raw reply for `user_ids`: one ``[vector, version, seen, acts]`` per
        user (raises RedisError; on a cluster also RedisClusterException)."""
        if cluster.is_cluster(self._client):
            return await cluster.read_users(self._client, READ_USERS_SCRIPT,  # type: ignore[arg-type]
                                            self._user_vectors, self._fixed, user_ids)
        packed = b"".join([b"*%d\r\n" % (self._head_words + len(user_ids)), self._head,
                           *(bulk(user_id.encode()) for user_id in user_ids)])
        try:
            replies: list[Any] = await self._call(packed)
        except NoScriptError:  # a restarted or flushed Redis: load the script once more
            await self._client.script_load(READ_USERS_SCRIPT)
            replies = await self._call(packed)
        return replies

    async def _call(self, packed: bytes) -> Any:
        """The reply to one packed command (raises the error Redis answered with)."""
        (reply,) = await send_packed(self._client, packed, 1)
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def _state(self, user_id: str, raw_vector: bytes | None, raw_version: bytes | None,
               seen_reply: list[bytes], acts_reply: list[bytes]) -> UserState:
        seen = tuple(map(bytes.decode, seen_reply))
        excluded = frozenset(map(bytes.decode, acts_reply))
        if self._seen_excluded:
            excluded = excluded.union(seen)
        version = raw_version.decode() if raw_vector is not None and raw_version is not None else None
        vector = None
        if raw_vector is not None:
            try:
                vector = decode_vector(raw_vector)
            except VectorFormatError as error:
                log.warning("user %s has an unusable vector (%s bytes: %s); not using it",
                            user_id, len(raw_vector), error)
        return UserState(vector=vector, version=version, seen=seen, excluded=excluded)

    async def popular(self, count: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """The `count` best items of the configured trending window, with their counts
        decayed to now (:func:`decayed_counts`), and the `count` most popular of all time
        with their weighted counts, best first, in one round trip. The window and its
        base time are read in one transaction: a rebase between them would misscale (on a
        cluster the two share the window's slot; the all-time key, in another, is read
        alongside)."""
        window = self._trending_window
        try:
            if window and cluster.is_cluster(self._client):
                (trending, base), popular = await asyncio.gather(
                    self._window(count), self._client.zrevrange(self._popular_key, 0, count - 1,
                                                                withscores=True))
                replies: list[Any] = [trending, base, popular]
            else:
                async with self._client.pipeline(transaction=bool(window)) as pipe:
                    if window:
                        pipe.zrevrange(self._trending_key, 0, count - 1, withscores=True)
                        pipe.get(self._trending_base_key)
                    pipe.zrevrange(self._popular_key, 0, count - 1, withscores=True)
                    replies = await pipe.execute()
        except cluster.STORE_ERRORS as error:
            raise StoreUnavailable(f"Redis is unavailable: {error}") from error
        popular = _pairs(replies[-1])
        if not window:
            return [], popular
        trending = decayed_counts(_pairs(replies[0]), base_ms=_base_ms(replies[1]),
                                  now_ms=time.time() * 1000, tau_ms=self._trending_tau_ms)
        return trending, popular

    async def _window(self, count: int) -> list[Any]:
        """The trending window's best `count` and its base time, in one transaction."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.zrevrange(self._trending_key, 0, count - 1, withscores=True)
            pipe.get(self._trending_base_key)
            return await pipe.execute()  # type: ignore[no-any-return]


def _base_ms(raw: bytes | None) -> float | None:
    """The trending base time, or None when it is absent or not a finite number."""
    if raw is None:
        return None
    try:
        return decode_base_ms(raw)
    except ValueError:
        log.warning("trending base time %r is not a number; scores served as stored", raw[:32])
        return None


def _pairs(reply: list[tuple[bytes, float]]) -> list[tuple[str, float]]:
    return [(item.decode(), float(score)) for item, score in reply]
