"""The user read against the test Redis: every field, any user id, a script Redis lost."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from serving.online import OnlineStore


@pytest.fixture
async def client(redis_url: str, unique: str) -> AsyncIterator[tuple[Redis, str]]:
    redis = Redis.from_url(redis_url)
    prefix = f"{unique}:"
    try:
        yield redis, prefix
    finally:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def test_users_read_vector_version_seen_and_excluded_items_of_any_user_id(
    client: tuple[Redis, str],
) -> None:
    redis, prefix = client
    odd = "ü ser\r\n$3\r\n*"  # protocol characters in an id are data, not framing
    vector = np.arange(1, 5, dtype="<f4")
    await redis.hset(f"{prefix}uv:{odd}", mapping={"vec": vector.tobytes(), "version": "v1"})
    await redis.zadd(f"{prefix}seen:{odd}", {"a": 1, "b": 3, "c": 2})
    await redis.zadd(f"{prefix}acts:purchase:{odd}", {"p": 1})
    store = OnlineStore(redis, prefix=prefix, seen_limit=2, exclude_types=("purchase",))
    known, unknown = await store.users([odd, "nobody"])
    assert known.vector is not None and known.vector.tolist() == vector.tolist()
    assert known.version == "v1" and known.seen == ("b", "c") and known.excluded == {"p"}
    assert unknown.vector is None and unknown.version is None
    assert unknown.seen == () and unknown.excluded == frozenset()


async def test_a_script_redis_no_longer_holds_is_loaded_again(
    client: tuple[Redis, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    redis, prefix = client
    await redis.zadd(f"{prefix}seen:u", {"a": 1})
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
