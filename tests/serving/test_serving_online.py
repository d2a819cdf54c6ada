"""The user read against the test Redis and a Redis Cluster: every field, any user id, a
batch of users over many slots, a script Redis lost, a cluster that serves only part of
its slots."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from conftest import delete_prefixed
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from contracts.online import RedisKeys, decayed_counts
from contracts.security import async_redis_client
from protos import events_pb2
from serving.cluster import is_cluster
from serving.online import OnlineStore
from serving.settings import ServingSettings, window_seconds


@pytest.fixture
async def client(online_url: str, unique: str) -> AsyncIterator[tuple[Redis, str]]:
    """A client of the single Redis, then of the cluster, and a fresh prefix."""
    redis = async_redis_client(online_url, None)
    prefix = f"{unique}:"
    try:
        yield redis, prefix
    finally:
        await delete_prefixed(redis, prefix)
        await redis.aclose()


async def test_users_read_vector_version_seen_and_excluded_items_of_any_user_id(
    client: tuple[Redis, str],
) -> None:
    redis, prefix = client
    keys = RedisKeys(prefix)
    odd = "ü ser\r\n$3\r\n*{}"  # protocol characters and braces in an id are data
    vector = np.arange(1, 5, dtype="<f4")
    await redis.hset(keys.user_vector(odd), mapping={"vec": vector.tobytes(), "version": "v1"})
    await redis.zadd(keys.seen(odd), {"a": 1, "b": 3, "c": 2})
    await redis.zadd(keys.acts(events_pb2.PURCHASE, odd), {"p": 1})
    store = OnlineStore(redis, prefix=prefix, seen_limit=2, exclude_types=("purchase",))
    known, unknown = await store.users([odd, "nobody"])
    assert known.vector is not None and known.vector.tolist() == vector.tolist()
    assert known.version == "v1" and known.seen == ("b", "c") and known.excluded == {"p"}
    assert unknown.vector is None and unknown.version is None
    assert unknown.seen == () and unknown.excluded == frozenset()


async def test_a_corrupt_or_non_finite_vector_is_not_used(
    client: tuple[Redis, str], caplog: pytest.LogCaptureFixture,
) -> None:
    redis, prefix = client
    keys = RedisKeys(prefix)
    await redis.hset(keys.user_vector("torn"), mapping={"vec": b"\x00\x00\x80?\x00", "version": "v1"})
    await redis.hset(keys.user_vector("nan"), mapping={
        "vec": np.array([1.0, np.nan], "<f4").tobytes(), "version": "v1"})
    await redis.zadd(keys.seen("nan"), {"a": 1})
    store = OnlineStore(redis, prefix=prefix, seen_limit=5)
    torn, nan = await store.users(["torn", "nan"])
    assert torn.vector is None and torn.version == "v1"
    assert nan.vector is None and nan.version == "v1" and nan.seen == ("a",)
    assert "user torn has an unusable vector (5 bytes" in caplog.text
    assert "user nan has an unusable vector (8 bytes: values that are not finite)" in caplog.text


async def test_a_script_redis_no_longer_holds_is_loaded_again(
    client: tuple[Redis, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    redis, prefix = client
    await redis.zadd(RedisKeys(prefix).seen("u"), {"a": 1})
    if is_cluster(redis):  # as a replica promoted by a failover: no script loaded
        await redis.script_flush()
        (state,) = await OnlineStore(redis, prefix=prefix, seen_limit=10).users(["u"])
        assert state.seen == ("a",)
        return
    store = OnlineStore(redis, prefix=prefix, seen_limit=10)
    real_call = store._call
    calls = 0

    async def lost_once(packed: bytes) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise NoScriptError("NOSCRIPT No matching script")
        return await real_call(packed)

    monkeypatch.setattr(store, "_call", lost_once)
    (state,) = await store.users(["u"])
    assert calls == 2 and state.seen == ("a",) and state.excluded == {"a"}


def test_trending_scores_become_counts_decayed_to_now_in_the_same_order() -> None:
    tau = 1000.0
    stored = [("a", 4.0 * math.e**3), ("b", math.e**3)]  # events at base + 3τ, weights 4 and 1
    counts = decayed_counts(stored, base_ms=0.0, now_ms=3 * tau, tau_ms=tau)
    assert [item for item, _ in counts] == ["a", "b"]
    assert [score for _, score in counts] == pytest.approx([4.0, 1.0])
    later = decayed_counts(stored, base_ms=0.0, now_ms=4 * tau, tau_ms=tau)
    assert [score for _, score in later] == pytest.approx([4.0 / math.e, 1.0 / math.e])
    # A base ahead of the clock counts as now; no base: the scores are counts already.
    assert decayed_counts(stored, base_ms=5 * tau, now_ms=3 * tau, tau_ms=tau) == stored
    assert decayed_counts(stored, base_ms=None, now_ms=3 * tau, tau_ms=tau) == stored


async def test_a_base_time_that_is_not_a_number_serves_the_scores_as_stored(
    client: tuple[Redis, str],
) -> None:
    redis, prefix = client
    keys = RedisKeys(prefix)
    await redis.zadd(keys.trending("1h"), {"a": 2.0, "b": 1.0})
    await redis.set(keys.trending_base("1h"), "not-a-time")
    store = OnlineStore(redis, prefix=prefix, seen_limit=0, trending_window="1h",
                        trending_tau_s=3600)
    assert await store.popular(5) == ([("a", 2.0), ("b", 1.0)], [])


def test_the_trending_decay_constant_comes_from_the_window_name_or_is_required() -> None:
    assert [window_seconds(name) for name in ("24h", "90m", "7d", "3600s", "hot", "0h")] == [
        86_400.0, 5400.0, 604_800.0, 3600.0, None, None]
    assert ServingSettings(trending_window="1h").trending_tau_s == 3600.0
    assert ServingSettings(trending_window="hot", trending_tau_s=600).trending_tau_s == 600.0
    with pytest.raises(ValueError, match="trending_tau_s is required"):
        ServingSettings(trending_window="hot")
    with pytest.raises(ValueError, match="decay time constant"):
        OnlineStore(Redis(), prefix="p:", seen_limit=0, trending_window="hot")
