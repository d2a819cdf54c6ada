"""streams.online against the real Redis, single and Cluster: contract keys, trimming, retry
until Redis is back, and effects applied once per record of the events topic."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from urllib.parse import urlparse

import numpy as np
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from contracts.online import RedisKeys, decayed, decode_vector, encode_vector, slot_of
from protos import events_pb2
from streams.online import Caps, OnlineState, Touch, UserVector, WriteBackoff, unapplied
from streams.trending import REBASE_EXPONENT, Window

pytestmark = pytest.mark.integration


HOUR_MS = 3_600_000.0
CAPS = Caps(seen=3, acts=2, purchases=4, trending=100)
_offsets = itertools.count()


def touch(item: str, ts: int, *, popularity: float = 2.0, user: str = "u1",
          kind: int = events_pb2.CLICK, partition: int = 0, offset: int | None = None) -> Touch:
    """A touch from the next record of `partition` unless `offset` is given."""
    return Touch(user_id=user, item_id=item, timestamp_ms=ts, popularity=popularity,
                 event_type=kind, partition=partition,
                 offset=next(_offsets) if offset is None else offset)


def online_state(client: Redis, keys: RedisKeys, caps: Caps = CAPS,
                 windows: tuple[Window, ...] = (Window("1h", HOUR_MS),),
                 retry_initial_s: float = 0.01) -> OnlineState:
    return OnlineState(client, keys=keys, caps=caps, trending=windows, group="g",
                       source_topic="ev", retry_initial_s=retry_initial_s, retry_max_s=0.1)


def user_vector(vector: np.ndarray, newest_ms: int, user: str = "u1") -> UserVector:
    return UserVector(user_id=user, vector=encode_vector(vector), version="base",
                      newest_ms=newest_ms, written_at_ms=1_790_000_000_000)


async def test_writes_the_contract_keys(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    online = online_state(client, keys)
    vector = np.array([0.6, 0.8], dtype=np.float32)
    await online.write([touch("a", 100)], [user_vector(vector, 100)])
    stored: dict[bytes, bytes]
    stored = await client.hgetall(keys.user_vector("u1"))  # type: ignore[assignment,misc]
    np.testing.assert_array_equal(decode_vector(stored[b"vec"]), vector)
    assert stored[b"version"] == b"base"
    assert int(stored[b"ts"]) == 100 and int(stored[b"at"]) == 1_790_000_000_000
    assert await client.zscore(keys.seen("u1"), "a") == 100
    assert await client.zscore(keys.popular(), "a") == 2.0


async def test_seen_keeps_newest_time_and_is_trimmed(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    online = online_state(client, keys)
    await online.write([touch("a", 10), touch("b", 20)], [])
    await online.write(
        [touch("c", 30), touch("a", 5), touch("d", 40), touch("x", 1, user="u2")], []
    )
    seen = await client.zrange(keys.seen("u1"), 0, -1, withscores=True)
    assert seen == [(b"b", 20.0), (b"c", 30.0), (b"d", 40.0)]
    assert await client.zscore(keys.popular(), "a") == 4.0
    assert await client.zrange(keys.seen("u2"), 0, -1) == [b"x"]


async def test_no_vector_and_no_popularity_leave_those_keys_alone(
    redis: tuple[Redis, RedisKeys],
) -> None:
    client, keys = redis
    online = online_state(client, keys)
    await online.write([touch("a", 10, popularity=0.0)], [])
    assert not await client.exists(keys.user_vector("u1"))
    assert await client.zscore(keys.popular(), "a") is None
    assert await client.zscore(keys.trending("1h"), "a") is None
    assert await client.zscore(keys.seen("u1"), "a") == 10


async def test_acts_per_event_type_with_their_own_caps(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    online = online_state(client, keys)
    purchase, view = events_pb2.PURCHASE, events_pb2.VIEW
    await online.write(
        [touch(f"p{k}", 100 + k, kind=purchase) for k in range(6)]
        + [touch(f"v{k}", 200 + k, kind=view) for k in range(3)]
        + [touch("p1", 50, kind=view), touch("v2", 1, kind=view)], []
    )
    assert keys.acts(purchase, "u1") == f"{keys.prefix}acts:purchase:{{u1}}"
    purchases = await client.zrange(keys.acts(purchase, "u1"), 0, -1, withscores=True)
    assert purchases == [(b"p2", 102.0), (b"p3", 103.0), (b"p4", 104.0), (b"p5", 105.0)]
    views = await client.zrange(keys.acts(view, "u1"), 0, -1, withscores=True)
    assert views == [(b"v1", 201.0), (b"v2", 202.0)]  # acts cap 2; newest time kept
    assert await client.exists(keys.acts(events_pb2.CLICK, "u1")) == 0
    assert await client.zcard(keys.seen("u1")) == 3


async def test_trending_ranks_by_decayed_count(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    online = online_state(client, keys)
    t0 = 1_790_000_000_000
    # "old" got 3 events an hour before "new" got 2: decayed, 3/e < 2.
    await online.write([touch("old", t0, popularity=1.0, user=f"u{k}") for k in range(3)], [])
    await online.write([touch("new", t0 + int(HOUR_MS), popularity=1.0, user=f"w{k}")
                        for k in range(2)], [])
    ranked = await client.zrevrange(keys.trending("1h"), 0, -1, withscores=True)
    assert [item for item, _ in ranked] == [b"new", b"old"]
    base = float(await client.get(keys.trending_base("1h")))
    now = t0 + HOUR_MS
    counts = {item: decayed(score, base, now, HOUR_MS) for item, score in ranked}
    assert counts[b"new"] == pytest.approx(2.0)
    assert counts[b"old"] == pytest.approx(3.0 / np.e)


async def test_trending_rebases_long_replays_without_overflow(
    redis: tuple[Redis, RedisKeys],
) -> None:
    client, keys = redis
    online = online_state(client, keys)
    t0 = 1_000_000_000_000
    step = int(HOUR_MS * REBASE_EXPONENT / 3)  # several rebases over the replay
    for k in range(40):  # 40 * 21 h: exp((t - t0) / 1 h) alone would overflow
        await online.write([touch("steady", t0 + k * step, popularity=1.0),
                            touch(f"once{k}", t0 + k * step, popularity=5.0)], [])
    now = t0 + 39 * step
    base = float(await client.get(keys.trending_base("1h")))
    assert base > t0
    ranked = await client.zrevrange(keys.trending("1h"), 0, -1, withscores=True)
    counts = {item.decode(): decayed(score, base, now, HOUR_MS) for item, score in ranked}
    assert all(np.isfinite(score) for _, score in ranked)
    assert [item for item, _ in ranked[:2]] == [b"once39", b"steady"]
    assert counts["once39"] == pytest.approx(5.0) and counts["steady"] == pytest.approx(1.0)
    assert "once0" not in counts  # decayed to nothing and dropped by a rebase


async def test_trending_is_capped(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    online = online_state(client, keys, caps=Caps(seen=3, acts=2, purchases=4, trending=5))
    await online.write([touch(f"i{k}", 1_000 + k, popularity=1.0 + k, user=f"u{k}")
                        for k in range(12)], [])
    top = await client.zrevrange(keys.trending("1h"), 0, -1)
    assert top == [f"i{k}".encode() for k in range(11, 6, -1)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_write_retries_until_redis_is_reachable(
    redis: tuple[Redis, RedisKeys], redis_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    client, keys = redis
    if isinstance(client, RedisCluster):
        pytest.skip("a proxy in front of one Redis; a cluster's outage is the failover test's")
    target = urlparse(redis_url)
    port = _free_port()  # nothing listens here until the proxy below starts
    database = target.path.lstrip("/") or "0"
    unreachable = Redis.from_url(f"redis://127.0.0.1:{port}/{database}")
    online = online_state(unreachable, keys, retry_initial_s=0.02)

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            target.hostname, target.port or 6379
        )

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    with caplog.at_level(logging.WARNING, logger="streams.online"):
        writing = asyncio.create_task(online.write([touch("a", 10)], []))
        await asyncio.sleep(0.5)
        assert not writing.done()
        server = await asyncio.start_server(forward, "127.0.0.1", port)
        try:
            await asyncio.wait_for(writing, timeout=10)
        finally:
            await unreachable.aclose()
            server.close()
    assert await client.zscore(keys.seen("u1"), "a") == 10
    assert any("retrying" in record.getMessage() for record in caplog.records)


def test_write_waits_double_from_the_initial_wait_up_to_the_cap_however_long_redis_is_down() -> None:
    backoff = WriteBackoff(0.1, 5.0)
    waits = [backoff.compute(failures) for failures in range(1, 10)]
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    assert backoff.compute(100_000) == 5.0  # hours of outage: still the cap, no overflow
    assert WriteBackoff(2.0, 1.0).compute(1) == 1.0


def test_unapplied_keeps_records_above_their_partitions_offset() -> None:
    vector = user_vector(np.array([1.0, 0.0], dtype=np.float32), 1)
    other = user_vector(np.array([0.0, 1.0], dtype=np.float32), 1, user="u2")
    touches = [touch("a", 1, partition=0, offset=4), touch("b", 1, partition=0, offset=5),
               touch("c", 1, partition=1, offset=9, user="u2")]
    fresh, vectors, newest = unapplied(touches, [vector, other], {0: 4, 1: 9})
    assert [t.item_id for t in fresh] == ["b"]
    assert vectors == [vector]  # u2 has nothing new: its vector may be older than the one stored
    assert newest == {0: 5}
    assert unapplied(touches, [vector], {}) == (touches, [vector], {0: 5, 1: 9})


async def test_a_record_written_again_adds_nothing(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    online = online_state(client, keys)
    first = [touch("a", 10, offset=0), touch("b", 20, offset=1, partition=1)]
    assert await online.write(first, []) == 2
    # Read again after a crash, with one new record: only the new one counts.
    assert await online.write([*first, touch("a", 30, offset=1)], []) == 1
    assert await client.zscore(keys.popular(), "a") == 4.0
    assert await client.zscore(keys.popular(), "b") == 2.0
    if isinstance(client, RedisCluster):  # per slot: u1's, popular's, the window's
        for key in (keys.user_vector("u1"), keys.popular(), keys.trending("1h")):
            fence = await client.hgetall(keys.fence("g", slot_of(key)))
            assert fence == {b"ev:0": b"1", b"ev:1": b"1"}, key
    else:
        assert await online.applied() == {0: 1, 1: 1}
        assert await client.hgetall(keys.applied("g")) == {b"ev:0": b"1", b"ev:1": b"1"}


async def test_a_worker_that_lost_the_race_applies_nothing(
    redis: tuple[Redis, RedisKeys],
) -> None:
    """Two workers write the same records (the old owner of a partition and the new one):
    whichever comes second finds them applied, however their transactions interleave."""
    client, keys = redis
    old, new = online_state(client, keys), online_state(client, keys)
    records = [touch(f"i{n}", n, offset=n) for n in range(50)]

    async def replay(worker: OnlineState) -> int:
        """A partition's records in order, in batches, as an owner writes them."""
        counts = [await worker.write(records[k:k + 5], []) for k in range(0, 50, 5)]
        return sum(counts)

    counts = await asyncio.gather(replay(old), replay(new))
    assert sum(counts) == 50
    scores = await client.zrange(keys.popular(), 0, -1, withscores=True)
    assert scores == [(f"i{n}".encode(), 2.0) for n in sorted(range(50), key=lambda n: f"i{n}")]


async def test_vector_marks_name_each_users_version_and_newest_event_or_none(
    redis: tuple[Redis, RedisKeys],
) -> None:
    client, keys = redis
    online = online_state(client, keys)
    vector = user_vector(np.ones(4, np.float32) / 2, 1, user="u1")
    await online.write([], [vector])
    assert await online.vector_marks(["u1", "u2"]) == [("base", vector.newest_ms), None]
    assert await online.vector_marks([]) == []


async def test_a_deletion_removes_the_users_keys_once(redis: tuple[Redis, RedisKeys]) -> None:
    client, keys = redis
    online = online_state(client, keys)
    vector = user_vector(np.array([1.0, 0.0], dtype=np.float32), 10, user="gone")
    await online.write([touch("a", 10, user="gone", offset=0, kind=events_pb2.PURCHASE),
                        touch("b", 10, user="kept", offset=1)], [vector])
    removed = await online.delete_user("gone", partition=0, offset=2)
    assert removed.now and removed.edges == 0
    for key in (keys.user_vector("gone"), keys.seen("gone"), keys.acts(events_pb2.PURCHASE, "gone")):
        assert not await client.exists(key), key
    assert await client.exists(keys.seen("kept"))
    assert not (await online.delete_user("gone", partition=0, offset=2)).now  # read again
    # The user's record before the deletion, read again after a crash, adds nothing.
    assert await online.write([touch("a", 10, user="gone", offset=0)], []) == 0
    assert not await client.exists(keys.seen("gone"))
