"""The online writes through a Redis Cluster failover: a master is SIGKILLed while batches
are written, its replica takes over (cluster-node-timeout 2 s), the writes resume after
their backoff, and a replay of the records (what a worker re-reading its partitions does)
leaves the state of one clean pass on a single Redis, also when the dead master took
acknowledged writes with it."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path
from typing import cast

import pytest
from redis.asyncio import Redis
from redis.cluster import RedisCluster

from contracts.online import RedisKeys
from contracts.security import async_redis_client, redis_client
from streams.online import Caps, OnlineState, Touch
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


def online(client: Redis, keys: RedisKeys) -> OnlineState:
    return OnlineState(client, keys=keys, caps=CAPS, trending=[Window("1h", 3_600_000.0)],
                       group="g", source_topic="ev", retry_initial_s=0.05, retry_max_s=0.5)


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
            infra("redis-cluster-start", str(victim))  # rejoins as a replica
            wait_ok(redis_cluster_url)
        async for name in cluster.scan_iter(match=f"{keys.prefix}*"):
            await cluster.delete(name)
        for name in [n async for n in single.scan_iter(match=f"{keys.prefix}*")]:
            await single.delete(name)
        await cluster.aclose()
        await single.aclose()
        await asyncio.sleep(0)
