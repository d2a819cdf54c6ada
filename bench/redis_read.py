"""The user read of every Recommend: the script call packed by hand once and sent on a
pooled connection (``serving.online.OnlineStore.replies``), against redis-py's plain ``evalsha`` and a registered ``Script`` through its command layer.

    PYTHONPATH=. .venv/bin/python -m bench.redis_read [--redis redis://127.0.0.1:6379/0]

Writes a few hundred users (a 384-d vector, 100 seen items, acts of every event type)
under a fresh key prefix, then calls ``READ_USERS_SCRIPT`` (``contracts/online.py``) for
batches of 1 and 8 users, each way in turn in alternating blocks, one call at a time, and
deletes the prefix's keys. Both ways answer the same raw reply (decoding it is the same
code either way, so it is left out). Prints, per batch size and way, the median latency
of a call and the client CPU per call (process time over a block), and the ratios of
the plain calls to the packed one. Runs in well under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from redis.asyncio import Redis

from contracts.online import (
    EVENT_TYPE_NUMBERS,
    EVENT_TYPES,
    READ_USERS_SCRIPT,
    VECTOR_FIELD,
    VERSION_FIELD,
    RedisKeys,
    encode_vector,
    read_users_args,
)
from serving.online import OnlineStore

USERS = 256
SEEN = 100
BLOCKS = 6  # per way and batch size, alternating
CALLS = 500  # per block

Read = Callable[[list[str]], Awaitable[Any]]


def plain_read(client: Redis, fixed: Sequence[str]) -> Read:
    """The same call through redis-py's command layer."""
    sha = hashlib.sha1(READ_USERS_SCRIPT.encode()).hexdigest()

    async def read(user_ids: list[str]) -> Any:
        return await client.evalsha(sha, 0, *fixed, *user_ids)

    return read


def script_read(client: Redis, fixed: Sequence[str]) -> Read:
    """The same call as a registered ``Script`` (EVALSHA, loading the script when Redis
    lacks it)."""
    script = client.register_script(READ_USERS_SCRIPT)

    async def read(user_ids: list[str]) -> Any:
        return await script(args=[*fixed, *user_ids])

    return read


async def _fill(client: Redis, keys: RedisKeys, rng: np.random.Generator) -> list[str]:
    users = [f"user-{n}" for n in range(USERS)]
    async with client.pipeline(transaction=False) as pipe:
        for user in users:
            vector = rng.normal(size=384).astype(np.float32)
            pipe.hset(keys.user_vector(user), mapping={VECTOR_FIELD: encode_vector(vector),
                                                       VERSION_FIELD: "base"})
            pipe.zadd(keys.seen(user), {f"item-{rng.integers(50_000)}": t for t in range(SEEN)})
            for name in EVENT_TYPES:
                pipe.zadd(keys.acts(EVENT_TYPE_NUMBERS[name], user),
                          {f"item-{rng.integers(50_000)}": t for t in range(10)})
        await pipe.execute()
    return users


async def _block(read: Read, batches: list[list[str]]) -> tuple[list[float], float]:
    """Latencies (ms) of one call per batch, and the client CPU per call (µs)."""
    latencies = []
    cpu = time.process_time()
    for batch in batches:
        start = time.perf_counter()
        await read(batch)
        latencies.append((time.perf_counter() - start) * 1000)
    return latencies, (time.process_time() - cpu) / len(batches) * 1e6


async def run(url: str) -> None:
    client = Redis.from_url(url)
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    keys = RedisKeys(prefix)
    rng = np.random.default_rng(0)
    try:
        users = await _fill(client, keys, rng)
        await client.script_load(READ_USERS_SCRIPT)
        fixed = read_users_args(keys, seen_limit=500, types=EVENT_TYPES)
        packed = OnlineStore(client, prefix=prefix, seen_limit=500, coalesce=False)
        ways: dict[str, Read] = {"packed": packed.replies, "evalsha": plain_read(client, fixed),
                "script": script_read(client, fixed)}
        answers = [await read(users[:8]) for read in ways.values()]
        assert all(answer == answers[0] for answer in answers)
        print(f"{'batch':>5} {'way':>8} {'p50 ms':>8} {'CPU µs/call':>12}")
        for size in (1, 8):
            latencies: dict[str, list[float]] = {way: [] for way in ways}
            cpu: dict[str, list[float]] = {way: [] for way in ways}
            for _ in range(BLOCKS):
                batches = [list(rng.choice(users, size, replace=False)) for _ in range(CALLS)]
                for way, read in ways.items():
                    got, per_call = await _block(read, batches)
                    latencies[way] += got
                    cpu[way].append(per_call)
            for way in ways:
                print(f"{size:>5} {way:>8} {statistics.median(latencies[way]):>8.3f} "
                      f"{statistics.median(cpu[way]):>12.1f}")
            for way in ("evalsha", "script"):
                print(f"{size:>5} {way}/packed: p50 "
                      f"{statistics.median(latencies[way]) / statistics.median(latencies['packed']):.2f}×, "
                      f"CPU {statistics.median(cpu[way]) / statistics.median(cpu['packed']):.2f}×")
    finally:
        doomed = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if doomed:
            await client.delete(*doomed)
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    asyncio.run(run(parser.parse_args().redis))


if __name__ == "__main__":
    main()
