"""A user's online state expires after `user_ttl_s` of inactivity: every key of the user
gets the time to live, each batch in which they act starts it again, a release's
re-embedding does not, and the graph never expires. Against the real Redis, then a
running worker."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from redis.asyncio import Redis
from streams_harness import Running, outputs, publish_items

from contracts.online import RedisKeys, encode_vector
from protos import events_pb2
from streams.online import Caps, OnlineState, Touch, UserVector, expiring_keys, user_keys

pytestmark = pytest.mark.integration

TTL_S = 1000
CAPS = Caps(seen=10, acts=10, purchases=10, trending=10)
WORKER_ENV = {"STREAMREC_STREAMS_USER_TTL_S": str(TTL_S)}


def touch(user: str, item: str, offset: int, kind: int = events_pb2.CLICK) -> Touch:
    return Touch(user_id=user, item_id=item, timestamp_ms=1_000 + offset, popularity=1.0,
                 event_type=kind, partition=0, offset=offset)


def vector(user: str) -> UserVector:
    return UserVector(user_id=user, vector=encode_vector(np.array([0.6, 0.8])), version="base",
                      newest_ms=1_000, written_at_ms=1_790_000_000_000)


def online_state(client: Redis, keys: RedisKeys, user_ttl_s: int) -> OnlineState:
    return OnlineState(client, keys=keys, caps=CAPS, trending=(), group="g", source_topic="ev",
                       retry_initial_s=0.01, retry_max_s=0.1, user_ttl_s=user_ttl_s)


def test_expiring_keys_put_acting_users_first() -> None:
    keys = RedisKeys("p:")
    names, acted = expiring_keys(keys, [touch("a", "i", 1), touch("a", "j", 2)],
                                 [vector("a"), vector("b")])
    assert names == [*user_keys(keys, "a"), keys.user_vector("b")]
    assert acted == len(user_keys(keys, "a"))
    assert keys.social("a") in names and keys.following("a") not in names


async def test_every_key_of_an_acting_user_gets_the_ttl(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    online = online_state(client, keys, TTL_S)
    await client.zadd(keys.social("u"), {"f|4|x": 1.0})  # as the fan-out writes it
    await client.hset(keys.following("u"), "f", 1)
    await online.write([touch("u", "a", 1), touch("u", "b", 2, events_pb2.PURCHASE)],
                       [vector("u")])
    for name in (keys.user_vector("u"), keys.seen("u"), keys.acts(events_pb2.CLICK, "u"),
                 keys.acts(events_pb2.PURCHASE, "u"), keys.social("u")):
        assert 0 < await client.ttl(name) <= TTL_S, name
    assert await client.ttl(keys.following("u")) == -1  # the graph stays
    assert await client.ttl(keys.popular()) == -1


async def test_acting_again_starts_the_ttl_again(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    online = online_state(client, keys, TTL_S)
    await online.write([touch("u", "a", 1, events_pb2.PURCHASE)], [vector("u")])
    for name in user_keys(keys, "u"):
        if await client.exists(name):
            await client.expire(name, 5)  # as if most of the time had passed
    # A click only: the purchase set, untouched by this batch, starts again too.
    await online.write([touch("u", "b", 2)], [])
    for name in (keys.user_vector("u"), keys.seen("u"), keys.acts(events_pb2.PURCHASE, "u"),
                 keys.acts(events_pb2.CLICK, "u")):
        assert await client.ttl(name) > 5, name


async def test_re_embedding_alone_keeps_the_inactivity_clock(
        redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    online = online_state(client, keys, TTL_S)
    await online.write([touch("u", "a", 1)], [vector("u")])
    await client.expire(keys.user_vector("u"), 5)
    await online.write([], [vector("u"), vector("new")])  # a release's re-embedding
    assert 0 < await client.ttl(keys.user_vector("u")) <= 5
    assert 5 < await client.ttl(keys.user_vector("new")) <= TTL_S  # never left without one


async def test_zero_means_never(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    online = online_state(client, keys, 0)
    await online.write([touch("u", "a", 1)], [vector("u")])
    assert await client.ttl(keys.seen("u")) == -1
    assert await client.ttl(keys.user_vector("u")) == -1


def test_the_worker_sets_and_starts_again_the_ttl(running: Running) -> None:
    tag = "r" + uuid.uuid4().hex[:8]
    (item,) = publish_items(running, tag, 1)
    user = f"{tag}-user"
    keys = RedisKeys(running.worker.redis_prefix)

    def click(n: int) -> bytes:
        return events_pb2.Event(event_id=f"{tag}-{n}", user_id=user, item_id=item,
                                type=events_pb2.CLICK,
                                timestamp_ms=time.time_ns() // 1_000_000).SerializeToString()

    running.send("events", user, click(0))
    outputs(running, tag, enriched=1, dead=0)
    names = (keys.user_vector(user), keys.seen(user), keys.acts(events_pb2.CLICK, user))
    deadline = time.monotonic() + 30
    while not all(running.redis.exists(name) for name in names):
        assert time.monotonic() < deadline, running.worker.log_tail()
        time.sleep(0.1)
    for name in names:
        assert 0 < running.redis.ttl(name) <= TTL_S, name
        running.redis.expire(name, 100)
    running.send("events", user, click(1))
    outputs(running, tag, enriched=2, dead=0)
    deadline = time.monotonic() + 30
    while not all(running.redis.ttl(name) > 100 for name in names):
        assert time.monotonic() < deadline, [running.redis.ttl(name) for name in names]
        time.sleep(0.1)
