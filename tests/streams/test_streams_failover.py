"""The online writes through a Redis Cluster failover: a master is SIGKILLed while batches
are written, its replica takes over (cluster-node-timeout 2 s), the writes resume after
their backoff, and a replay of the records (what a worker re-reading its partitions does)
leaves the state of one clean pass on a single Redis, also when the dead master took
acknowledged writes with it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
from aiokafka import AIOKafkaProducer
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.cluster import RedisCluster

from contracts.deletions import control_headers
from contracts.online import RedisKeys
from contracts.security import async_redis_client, redis_client
from protos import events_pb2
from contracts.relations import RelationLimits, key_of
from streams.graph import EdgeChange, relation_outcomes
from streams.online import AppliedOffsets, Caps, Deletion, OnlineState, Touch
from streams.records import Record as RelationRecord
from streams.recovery import EnrichedLog
from streams.relations import BatchClock, RelationsLog
from streams.trending import Window

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.slow]

INFRA = Path(__file__).resolve().parents[2] / "scripts" / "infra.sh"
CAPS = Caps(seen=20, acts=10, purchases=10, trending=1000)
USERS, ITEMS, BATCHES, BATCH = 300, 50, 120, 50


def records() -> list[list[Touch]]:
    """Batches of one partition's records, in offset order, over many users (many slots)."""
    batches = []
    for b in range(BATCHES):
        batch = []
        for k in range(BATCH):
            n = b * BATCH + k
            batch.append(Touch(user_id=f"u{n * 7 % USERS}", item_id=f"i{n * 11 % ITEMS}",
                               timestamp_ms=1_790_000_000_000 + n, popularity=1.0,
                               event_type=1 + n % 4, partition=n % 3, offset=n // 3))
        batches.append(batch)
    return batches


def online(client: Redis, keys: RedisKeys, source: str = "ev") -> OnlineState:
    return OnlineState(client, keys=keys, caps=CAPS, trending=[Window("1h", 3_600_000.0)],
                       group="g", source_topic=source, retry_initial_s=0.05, retry_max_s=0.5)


async def state(client: Redis, keys: RedisKeys) -> dict[str, object]:
    found: dict[str, object] = {
        "popular": await client.zrange(keys.popular(), 0, -1, withscores=True),
        "trending": await client.zrange(keys.trending("1h"), 0, -1),  # ranked, not scores
    }
    for u in range(USERS):
        found[f"seen u{u}"] = await client.zrange(keys.seen(f"u{u}"), 0, -1, withscores=True)
    return found


def infra(*args: str) -> None:
    subprocess.run(["bash", str(INFRA), *args], check=True, capture_output=True, timeout=120)


def wait_ok(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client = cast(RedisCluster, redis_client(url, None))
            try:
                if client.cluster_info().get("cluster_state") == "ok":
                    return
            finally:
                client.close()
        except Exception:  # noqa: BLE001 - a cluster mid-failover fails in many ways
            pass
        assert time.monotonic() < deadline, "the cluster did not come back to cluster_state:ok"
        time.sleep(0.2)


async def close(cluster: Redis, single: Redis, keys: RedisKeys) -> None:
    """Delete the test's keys from both and close the clients."""
    async for name in cluster.scan_iter(match=f"{keys.prefix}*"):
        await cluster.delete(name)
    for name in [n async for n in single.scan_iter(match=f"{keys.prefix}*")]:
        await single.delete(name)
    await cluster.aclose()
    await single.aclose()
    await asyncio.sleep(0)


def rejoin(url: str, port: int, timeout_s: float = 60.0) -> None:
    """Start the killed node again and wait until it is a replica in sync with its master:
    a replica still syncing cannot take over, so the next failover would not happen."""
    infra("redis-cluster-start", str(port))
    wait_ok(url)
    node = SyncRedis(port=port)
    deadline = time.monotonic() + timeout_s
    try:
        while node.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, f"node {port} did not sync with its master"
            time.sleep(0.2)
    finally:
        node.close()


async def test_writes_resume_after_a_master_dies_and_a_replay_rebuilds_one_clean_pass(
    redis_cluster_url: str, redis_url: str, unique: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="streams")
    keys = RedisKeys(f"test-{unique}:")
    batches = records()
    sync = redis_client(redis_cluster_url, None)
    assert isinstance(sync, RedisCluster)
    victim = sync.get_node_from_key(keys.popular()).port  # the master of popular's slot
    sync.close()
    cluster = async_redis_client(redis_cluster_url, None)
    single = Redis.from_url(redis_url)
    writer = online(cluster, keys)
    killed = False
    try:
        for n, batch in enumerate(batches):
            if n == BATCHES // 3:
                infra("redis-cluster-kill", str(victim))
                killed = True
            await writer.write(batch, [])  # retries until the replica has taken over
        wait_ok(redis_cluster_url)
        assert any("retrying" in r.getMessage() for r in caplog.records), "no write failed"
        lost = writer.regressed()
        # A worker reads its partitions again (from where fences may have gone back, here
        # from the start): what a slot applied is skipped, what the dead master lost is
        # applied again.
        again = online(cluster, keys)
        replayed = sum([await again.write(batch, []) for batch in batches])
        clean = online(single, keys)
        for batch in batches:
            await clean.write(batch, [])
        assert await state(cluster, keys) == await state(single, keys)
        print(f"failover of {victim}: fences went back on {lost or 'no partition'}; "
              f"the replay applied {replayed} records again")
        assert replayed == 0 or lost, "a replay applied records that no failover lost"
    finally:
        if killed:
            rejoin(redis_cluster_url, victim)  # as a replica
        await close(cluster, single, keys)


def replica_of(url: str, master_port: int) -> int:
    """The port of `master_port`'s replica."""
    client = cast(RedisCluster, redis_client(url, None))
    try:
        nodes = client.cluster_nodes()
    finally:
        client.close()
    master = next(n["node_id"] for addr, n in nodes.items() if addr.endswith(f":{master_port}"))
    return next(int(addr.rsplit(":", 1)[1]) for addr, n in nodes.items()
                if n.get("master_id") == master)


class LossyFailover:
    """A master that acknowledges writes it never replicates, then dies: its replica is
    stopped (SIGSTOP) and its link cut (:meth:`cut_off`); the master is SIGKILLed and the
    replica resumed, to be promoted (:meth:`kill`); :meth:`restore` undoes what is left
    (the killed node rejoins as a replica)."""

    def __init__(self, url: str, victim: int) -> None:
        self.url, self.victim = url, victim
        replica = replica_of(url, victim)
        self.replica_pid = int(SyncRedis(port=replica).info("server")["process_id"])
        self.stopped = self.killed = False

    def cut_off(self) -> None:
        os.kill(self.replica_pid, signal.SIGSTOP)
        self.stopped = True
        master = SyncRedis(port=self.victim)
        master.client_kill_filter(_type="replica")
        master.close()

    def kill(self) -> None:
        infra("redis-cluster-kill", str(self.victim))
        self.killed = True
        os.kill(self.replica_pid, signal.SIGCONT)
        self.stopped = False

    def restore(self) -> None:
        if self.stopped:
            os.kill(self.replica_pid, signal.SIGCONT)
        if self.killed:
            rejoin(self.url, self.victim)  # as a replica


def source_event(touch: Touch) -> events_pb2.Event:
    return events_pb2.Event(event_id=f"e{touch.partition}-{touch.offset}",
                            user_id=touch.user_id, item_id=touch.item_id,
                            type=touch.event_type,  # type: ignore[arg-type]
                            timestamp_ms=touch.timestamp_ms)


def enriched_value(touch: Touch, source: str = "ev") -> bytes:
    """What the worker logs for an accepted event: the touch's fields and its source."""
    return events_pb2.EnrichedEvent(
        event=source_event(touch), weight=touch.popularity, source_topic=source,
        source_partition=touch.partition, source_offset=touch.offset).SerializeToString()


Record = Touch | Deletion


async def apply(writer: OnlineState, batch: list[Record]) -> None:
    """A batch as the worker applies it: split at its deletions, each carried out between."""
    touches: list[Touch] = []
    for record in batch:
        if isinstance(record, Deletion):
            await writer.write(touches, [])
            touches = []
            await writer.delete_user(record.user_id, partition=record.partition,
                                     offset=record.offset)
        else:
            touches.append(record)
    await writer.write(touches, [])


async def produce_source(producer: AIOKafkaProducer, topic: str, batch: list[Record]) -> None:
    """The batch's records on the events topic, each at the offset it names."""
    sent = []
    for record in batch:
        if isinstance(record, Deletion):
            value = events_pb2.UserDeletion(user_id=record.user_id,
                                            requested_at_ms=1_790_000_000_000)
            sent.append(await producer.send(topic, value.SerializeToString(),
                                            key=record.user_id.encode(),
                                            partition=record.partition,
                                            headers=control_headers()))
        else:
            sent.append(await producer.send(topic, source_event(record).SerializeToString(),
                                            key=record.user_id.encode(),
                                            partition=record.partition))
    offsets = [(meta.partition, meta.offset) for meta in await asyncio.gather(*sent)]
    assert offsets == [(r.partition, r.offset) for r in batch]


async def test_writes_a_dead_master_took_with_it_are_read_back_from_the_log(
    redis_cluster_url: str, redis_url: str, kafka_bootstrap: str, unique: str,
    create_topics: Callable[..., list[str]], caplog: pytest.LogCaptureFixture,
) -> None:
    """The replica of popular's master is stopped (SIGSTOP) and its link cut while batches
    are written, so the master acknowledges writes it never replicates; then the master is
    SIGKILLed and the replica resumed and promoted. The writer finds the fences gone back and reads the
    lost records back from the enriched events (written after each batch, as the worker
    does), and the deletions among them from the events topic: the state equals one clean
    pass on a single Redis, without reading any record twice into Redis or replaying the
    log from its start, and no user deleted in the lost window comes back."""
    caplog.set_level(logging.WARNING, logger="streams")
    keys = RedisKeys(f"test-{unique}:")
    enriched, source = f"enriched-{unique}", f"ev-{unique}"
    create_topics([enriched, source], partitions=3)
    sync = redis_client(redis_cluster_url, None)
    assert isinstance(sync, RedisCluster)
    victim = sync.get_node_from_key(keys.popular()).port
    # In each batch the master will lose, one user of its slots is deleted (the record
    # becomes the deletion's control record); they all acted before.
    batches: list[list[Record]] = [list(batch) for batch in records()]
    deleted = []
    for batch in batches[BATCHES // 3:BATCHES // 3 + 5]:
        k, touch = next((k, t) for k, t in enumerate(batch) if isinstance(t, Touch)
                        and sync.get_node_from_key(keys.seen(t.user_id)).port == victim)
        batch[k] = Deletion(touch.user_id, touch.partition, touch.offset)
        deleted.append(touch.user_id)
    sync.close()
    # A deleted user does not come back: their later records are other (new) users', so a
    # deletion the failover undid would show as the user's keys in Redis.
    gone = set(deleted)
    for batch in batches[BATCHES // 3:]:
        batch[:] = [r._replace(user_id=f"x{r.partition}-{r.offset}")
                    if isinstance(r, Touch) and r.user_id in gone else r for r in batch]
    failover = LossyFailover(redis_cluster_url, victim)
    cluster = async_redis_client(redis_cluster_url, None)
    single = Redis.from_url(redis_url)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    writer = OnlineState(cluster, keys=keys, caps=CAPS, trending=[Window("1h", 3_600_000.0)],
                         group="g", source_topic=source, retry_initial_s=0.05, retry_max_s=0.5,
                         recovery=EnrichedLog(bootstrap_servers=[kafka_bootstrap],
                                              topic=enriched, source_topic=source, retry_s=0.5))
    writer.before_read_back = producer.flush
    lost_vectors: list[tuple[int, str]] = []
    writer.on_lost_vectors = lost_vectors.extend
    try:
        for n, batch in enumerate(batches):
            if n == BATCHES // 3:
                # the master's next writes are acknowledged and stay on the master alone
                failover.cut_off()
            if n == BATCHES // 3 + 5:
                failover.kill()  # 5 acknowledged batches die with it
            await produce_source(producer, source, batch)
            await apply(writer, batch)  # retries until the replica has taken over
            for touch in batch:  # Redis first, then the log
                if isinstance(touch, Touch):
                    await producer.send(enriched, key=touch.user_id.encode(),
                                        value=enriched_value(touch, source))
        wait_ok(redis_cluster_url)
        assert writer.regressed(), "no fence went back: the failover lost nothing"
        assert writer.recovered > 0
        clean = online(single, keys, source)
        for batch in batches:
            await apply(clean, batch)
        assert await state(cluster, keys) == await state(single, keys)
        for user in deleted:
            assert await cluster.exists(keys.seen(user), keys.user_vector(user)) == 0, user
        # a second pass (a worker reading its partitions again) applies nothing
        again = online(cluster, keys, source)
        assert sum([await again.write([t for t in batch if isinstance(t, Touch)], [])
                    for batch in batches]) == 0
        read_back = [r.getMessage() for r in caplog.records if "read back" in r.getMessage()]
        assert read_back and any(" 0 deletions" not in m for m in read_back), read_back
        print(f"failover of {victim}: {writer.recovered} records read back for "
              f"{writer.regressed()}; {len(set(lost_vectors))} users to embed again")
    finally:
        await producer.stop()
        failover.restore()
        await close(cluster, single, keys)


def relation_batches() -> list[list[events_pb2.Relation]]:
    """Follows over many users (many slots), each pair once, some of two kinds; from batch
    20 on each batch takes back some follows of the batch ten before it (so the batches
    the failover loses decide part of the final graph)."""
    def pair(n: int) -> tuple[str, str]:
        p = n * 37 % (120 * 119)  # a different ordered pair for each n
        follower = p // 119
        return f"u{follower}", f"u{(follower + 1 + p % 119) % 120}"

    batches: list[list[events_pb2.Relation]] = []
    for b in range(40):
        batch = []
        for k in range(20):
            n = b * 20 + k
            follower, followee = pair(n)
            batch.append(events_pb2.Relation(
                follower_id=follower, followee_id=followee, timestamp_ms=1_790_000_000_000 + n,
                kind=events_pb2.FRIEND if n % 5 == 0 else events_pb2.FOLLOW,  # type: ignore[arg-type]
                share_name=n % 4 == 0))
        if b >= 20:
            batch += [events_pb2.Relation(
                follower_id=r.follower_id, followee_id=r.followee_id, kind=r.kind,
                timestamp_ms=r.timestamp_ms + 10_000, removed=True)
                for r in batches[b - 10][::3]]
        batches.append(batch)
    return batches


async def graph_state(client: Redis, keys: RedisKeys) -> dict[str, object]:
    found: dict[str, object] = {"hot": sorted(await client.smembers(keys.hot()))}
    for u in range(120):
        found[f"following u{u}"] = await client.hgetall(keys.following(f"u{u}"))
        found[f"followers u{u}"] = await client.hgetall(keys.followers(f"u{u}"))
    return found


async def test_edges_a_dead_master_took_with_it_are_read_back_from_relations(
    redis_cluster_url: str, redis_url: str, kafka_bootstrap: str, unique: str,
    create_topics: Callable[..., list[str]], caplog: pytest.LogCaptureFixture,
) -> None:
    """As above for the social graph: while the replica of a master is stopped and cut
    off, edge batches are acknowledged by the master alone; it is SIGKILLed and the
    replica promoted. The writer finds its relations fences gone back, reads that span of
    ``relations`` again and applies it in the slots that lost it: the graph equals one
    clean pass on a single Redis."""
    caplog.set_level(logging.WARNING, logger="streams")
    keys = RedisKeys(f"test-{unique}:")
    (topic,) = create_topics([f"rel-{unique}"], partitions=3)
    sync = redis_client(redis_cluster_url, None)
    assert isinstance(sync, RedisCluster)
    victim = sync.get_node_from_key(keys.following("u0")).port
    sync.close()
    failover = LossyFailover(redis_cluster_url, victim)
    cluster = async_redis_client(redis_cluster_url, None)
    single = Redis.from_url(redis_url)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    limits = RelationLimits(max_bytes=10_000, max_future_skew_ms=10**12, max_id_chars=64)
    applied = AppliedOffsets(keys.applied("g-relations"), topic, "g-relations")

    def writer(client: Redis) -> OnlineState:
        return OnlineState(client, keys=keys, caps=CAPS, trending=[], group="g",
                           source_topic="ev", retry_initial_s=0.05, retry_max_s=0.5)

    cluster_writer = writer(cluster)
    clock = BatchClock()
    log = RelationsLog(servers=[kafka_bootstrap], topic=topic, limits=limits, clock=clock,
                       retry_s=0.5)
    changes: list[list[EdgeChange]] = []
    try:
        for n, batch in enumerate(relation_batches()):
            if n == 10:
                failover.cut_off()
            if n == 15:
                failover.kill()  # 5 acknowledged batches die with it
            sent = await asyncio.gather(*[await producer.send(
                topic, r.SerializeToString(), key=key_of(r), partition=zlib.crc32(key_of(r)) % 3)
                for r in batch])
            records = [RelationRecord(topic, m.partition, m.offset, key_of(r),
                                      r.SerializeToString()) for m, r in zip(sent, batch)]
            now = 1_790_000_000_000 + n
            clock.note(records, now)
            found = [o for _, o in relation_outcomes(records, now_ms=now, limits=limits)]
            assert all(isinstance(o, EdgeChange) for o in found), found
            changes.append(found)  # type: ignore[arg-type]
            await cluster_writer.write_relations(found, applied=applied,  # type: ignore[arg-type]
                                                 fanout_threshold=4, recovery=log)
        wait_ok(redis_cluster_url)
        assert cluster_writer.recovered > 0, "no fence went back: the failover lost nothing"
        clean = writer(single)
        for found in changes:
            await clean.write_relations(found, applied=applied, fanout_threshold=4)
        assert await graph_state(cluster, keys) == await graph_state(single, keys)
        # a second pass (a reader reading its partitions again) applies nothing
        again = writer(cluster)
        assert sum([(await again.write_relations(found, applied=applied,
                                                 fanout_threshold=4))[0]
                    for found in changes]) == 0
        print(f"failover of {victim}: {cluster_writer.recovered} edge changes read back")
    finally:
        await producer.stop()
        failover.restore()
        await close(cluster, single, keys)
