"""Redis memory of the online state of N active users, by key kind.

    PYTHONPATH=. .venv/bin/python -m bench.redis_memory [--users 100000] [--caps-users 2000]
        [--redis redis://127.0.0.1:6379/0] [--out bench/results/redis_memory.json]

Two profiles, each under a fresh scratch prefix of the real Redis, its keys deleted after:

- ``typical``: each user has ``--events`` (60) events over a 50,000-item catalog in a
  shop's mix of types (60 % views, 20 % clicks, 10 % add-to-cart, 5 % purchases, 5 %
  ratings), a social feed of ``--feed`` (100) members and ``--follows`` (50) edges each
  way;
- ``caps``: every set at the streams worker's caps (``seen`` at ``history_length``, each
  ``acts`` at ``acts_length``, purchases at ``purchases_length``, the feed at its cap):
  the most a user can hold, so the bound on Redis memory per user.

A user's events, vector (384-d, float32) and the time to live of their keys are written
through the worker's own write path (``streams.online.OnlineState.write``, in batches of
``event_batch_size`` events, with the worker's default settings); the feed and the
edges, which another writer owns, with the commands and formats of ``contracts/social.py``
(``ZADD`` of ``feed_member`` / ``feed_score``, ``HSET`` of ``EdgeFlags``). Memory is
measured two ways: ``MEMORY USAGE`` (exact, ``SAMPLES 0``) of every key of a sample of
users, summed by kind; and the growth of ``INFO used_memory`` over the whole write
(everything Redis spent, the key table and expiry table included, but also whatever else
wrote to a shared Redis meanwhile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from contracts.online import EVENT_TYPE_NAMES, RedisKeys, encode_vector
from contracts.social import (
    DEFAULT_FEED_CAP,
    DEFAULT_TAU_S,
    DEFAULT_TYPE_WEIGHTS,
    EdgeFlags,
    feed_member,
    feed_score,
)
from protos import events_pb2
from streams.online import OnlineState, Touch, UserVector
from streams.settings import StreamsSettings
from streams.worker import online_state

CATALOG = 50_000
DIM = 384
SAMPLE_USERS = 1000
LIVE_EVENTS = 60  # most events of one user in one batch
MIX = {events_pb2.VIEW: 0.60, events_pb2.CLICK: 0.20, events_pb2.ADD_TO_CART: 0.10,
       events_pb2.PURCHASE: 0.05, events_pb2.RATING: 0.05}
KINDS = ("vector", "seen", "acts", "social_feed", "graph")
MIB = 1024 * 1024
BUSY_WAIT_S = 600.0  # a shared Redis may be running someone's long script meanwhile
T = TypeVar("T")


async def unless_busy(call: Callable[[], Awaitable[T]]) -> T:
    """`call`, again while Redis answers BUSY (a script of another client running)."""
    deadline = time.monotonic() + BUSY_WAIT_S
    while True:
        try:
            return await call()
        except ResponseError as error:
            if not str(error).startswith("BUSY") or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


@dataclass(frozen=True)
class Profile:
    """What each user holds: events by type (None: the mix of ``events``), feed, edges."""

    name: str
    users: int
    events: int
    feed: int
    follows: int
    per_type: dict[int, int] | None = None  # events of each type, filling each cap


def user_name(n: int) -> str:
    return f"user-{n}"


def user_touches(rng: np.random.Generator, profile: Profile, user: str, now_ms: int
                 ) -> list[Touch]:
    """The user's events as the worker's touches, newest last (offsets set when written)."""
    if profile.per_type is None:
        types = rng.choice(list(MIX), size=profile.events, p=list(MIX.values()))
    else:
        types = np.concatenate([np.full(n, t) for t, n in profile.per_type.items()])
    if profile.per_type is None:  # a user comes back to some items
        items = rng.integers(CATALOG, size=len(types))
    else:  # distinct items, so that every set fills to its cap
        items = (rng.integers(CATALOG) + np.arange(len(types))) % CATALOG
    return [Touch(user, f"item-{item}", now_ms - 1000 * (len(types) - k), 1.0, int(kind), 0, 0)
            for k, (kind, item) in enumerate(zip(types, items, strict=True))]


async def write_social(client: Redis, keys: RedisKeys, rng: np.random.Generator,
                       profile: Profile, users: list[int], now_ms: int) -> None:
    """Each user's feed and edges, as the social writers store them."""
    weights = {int(events_pb2.EventType.Value(name.upper())): w
               for name, w in DEFAULT_TYPE_WEIGHTS.items()}
    types = list(weights)
    flags = str(EdgeFlags().with_edge(events_pb2.FOLLOW, share_name=False).encode())
    async with client.pipeline(transaction=False) as pipe:
        for n in users:
            user = user_name(n)
            actors = rng.integers(profile.users, size=profile.feed)
            kinds = rng.choice(types, size=profile.feed)
            items = rng.integers(CATALOG, size=profile.feed)
            ages = rng.integers(0, 30 * 86_400_000, size=profile.feed)
            pipe.zadd(keys.social(user), {
                feed_member(user_name(int(a)), int(t), f"item-{i}"):
                    feed_score(weights[int(t)], now_ms - int(age), DEFAULT_TAU_S * 1000)
                for a, t, i, age in zip(actors, kinds, items, ages, strict=True)})
            edges = min(profile.follows, profile.users)
            others = rng.choice(profile.users, size=edges, replace=False)
            pipe.hset(keys.following(user), mapping={user_name(int(o)): flags for o in others})
            followers = rng.choice(profile.users, size=edges, replace=False)
            pipe.hset(keys.followers(user), mapping={user_name(int(o)): flags for o in followers})
        await unless_busy(pipe.execute)


def batches(profile: Profile, batch_events: int) -> Iterator[list[int]]:
    """Users in groups of about `batch_events` events, as the worker's batches."""
    per_batch = max(1, batch_events // min(max(profile.events, 1), LIVE_EVENTS))
    for start in range(0, profile.users, per_batch):
        yield list(range(start, min(start + per_batch, profile.users)))


async def fill(client: Redis, online: OnlineState, profile: Profile, batch_events: int,
               rng: np.random.Generator) -> None:
    """Write every user's state; the feed and edges before the events, so that the
    events' batch starts the feed's time to live as the worker's does. A user's events
    arrive in batches of at most ``LIVE_EVENTS`` each, as live traffic does (one batch of
    more than 128 items for one sorted set would leave it in Redis' large encoding for
    good, even once trimmed: that is a backlog's cost, not a live user's)."""
    now_ms = time.time_ns() // 1_000_000
    offset = 0
    for group in batches(profile, batch_events):
        await write_social(client, online.keys, rng, profile, group, now_ms)
        rounds: list[list[Touch]] = []
        vectors: list[UserVector] = []
        for n in group:
            user = user_name(n)
            mine = user_touches(rng, profile, user, now_ms)
            for r, start in enumerate(range(0, len(mine), LIVE_EVENTS)):
                if r == len(rounds):
                    rounds.append([])
                rounds[r] += mine[start:start + LIVE_EVENTS]
            vector = rng.normal(size=DIM).astype(np.float32)
            vectors.append(UserVector(user, encode_vector(vector / np.linalg.norm(vector)),
                                      "20261201T000000Z", now_ms, now_ms))
        for r, touches in enumerate(rounds):
            # Offsets in write order: a record at or below the applied offset adds nothing.
            numbered = [t._replace(offset=offset + k) for k, t in enumerate(touches)]
            offset += len(numbered)
            await online.write(numbered, vectors if r == len(rounds) - 1 else [])


def user_keys_by_kind(keys: RedisKeys, user: str) -> dict[str, list[str]]:
    return {"vector": [keys.user_vector(user)], "seen": [keys.seen(user)],
            "acts": [pattern.of(user) for pattern in keys.acts_sets.values()],
            "social_feed": [keys.social(user)],
            "graph": [keys.following(user), keys.followers(user)]}


async def sampled_usage(client: Redis, keys: RedisKeys, users: list[int]
                        ) -> tuple[dict[str, float], dict[str, str]]:
    """Mean ``MEMORY USAGE`` bytes per user by kind over `users`, and each kind's encodings."""
    totals = dict.fromkeys(KINDS, 0.0)
    encodings: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for n in users:
        by_kind = user_keys_by_kind(keys, user_name(n))
        async with client.pipeline(transaction=False) as pipe:
            for names in by_kind.values():
                for name in names:
                    pipe.memory_usage(name, samples=0)
                    pipe.object("ENCODING", name)
            replies = iter(await unless_busy(pipe.execute))
        for kind, names in by_kind.items():
            for _ in names:
                used, encoding = next(replies), next(replies)
                if used:
                    totals[kind] += used
                    encodings[kind].add(encoding.decode() if isinstance(encoding, bytes) else encoding)
    return ({kind: total / len(users) for kind, total in totals.items()},
            {kind: "+".join(sorted(found)) for kind, found in encodings.items()})


async def delete_prefix(client: Redis, prefix: str) -> int:
    """UNLINK every key under `prefix`, 1,000 at a time; how many."""
    deleted, cursor = 0, 0
    while True:
        cursor, names = await unless_busy(
            lambda: client.scan(cursor, match=f"{prefix}*", count=5000))  # noqa: B023
        if names:
            deleted += await unless_busy(lambda: client.unlink(*names))  # noqa: B023
        if not cursor:
            return deleted


async def used_memory(client: Redis) -> int:
    return int((await unless_busy(lambda: client.info("memory")))["used_memory"])


async def measure(url: str, profile: Profile, settings: StreamsSettings, seed: int) -> dict[str, Any]:
    prefix = f"bench-mem-{uuid.uuid4().hex[:8]}:"
    client = Redis.from_url(url)
    rng = np.random.default_rng(seed)
    scratch = settings.model_copy(update={"redis_prefix": prefix})
    online = online_state(scratch, client)
    try:
        before = await used_memory(client)
        started = time.perf_counter()
        await fill(client, online, profile, settings.event_batch_size, rng)
        write_s = time.perf_counter() - started
        after = await used_memory(client)
        sample = sorted(rng.choice(profile.users, size=min(SAMPLE_USERS, profile.users),
                                   replace=False).tolist())
        per_kind, encodings = await sampled_usage(client, online.keys, sample)
        ttl = await unless_busy(lambda: client.ttl(online.keys.seen(user_name(sample[0]))))
    finally:
        deleted = await delete_prefix(client, prefix)
        await client.aclose()
    sampled_total = sum(per_kind.values())
    return {
        "profile": asdict(profile) | {"per_type": None if profile.per_type is None else {
            EVENT_TYPE_NAMES[t]: n for t, n in profile.per_type.items()}},
        "write_s": round(write_s, 1),
        "keys_deleted": deleted,
        "ttl_s_of_a_key": ttl,
        "memory_usage_bytes_per_user": {k: round(v) for k, v in per_kind.items()}
        | {"total": round(sampled_total)},
        "memory_usage_mib_per_100k_users": {k: round(v * 100_000 / MIB, 1) for k, v in per_kind.items()}
        | {"total": round(sampled_total * 100_000 / MIB, 1)},
        "used_memory_delta_bytes_per_user": round((after - before) / profile.users),
        "used_memory_delta_mib_per_100k_users": round((after - before) / profile.users * 100_000 / MIB, 1),
        "encodings": encodings,
        "sampled_users": len(sample),
    }


def profiles(args: argparse.Namespace, settings: StreamsSettings) -> list[Profile]:
    caps = {t: settings.acts_length for t in EVENT_TYPE_NAMES}
    caps[events_pb2.PURCHASE] = settings.purchases_length
    return [Profile("typical", args.users, args.events, args.feed, args.follows),
            Profile("caps", args.caps_users, sum(caps.values()), DEFAULT_FEED_CAP, args.follows,
                    per_type=caps)]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    settings = StreamsSettings()
    probe = Redis.from_url(args.redis)
    info = await probe.info("server")
    await probe.aclose()
    results = {
        "bench": "redis_memory",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "redis_version": info["redis_version"],
        "host": platform.node(),
        "streams_settings": {"history_length": settings.history_length,
                             "acts_length": settings.acts_length,
                             "purchases_length": settings.purchases_length,
                             "user_ttl_s": settings.user_ttl_s,
                             "event_batch_size": settings.event_batch_size,
                             "trending_windows": dict(settings.trending_windows)},
        "vector_dim": DIM,
        "runs": [],
    }
    for seed, profile in enumerate(profiles(args, settings)):
        if profile.users:
            results["runs"].append(await measure(args.redis, profile, settings, seed))
            print(json.dumps(results["runs"][-1]), flush=True)
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--users", type=int, default=100_000, help="users of the typical profile")
    parser.add_argument("--caps-users", type=int, default=2_000,
                        help="users of the profile at the caps (0: skip it)")
    parser.add_argument("--events", type=int, default=60, help="events per typical user")
    parser.add_argument("--feed", type=int, default=100, help="social feed members per typical user")
    parser.add_argument("--follows", type=int, default=50, help="followees (and followers) per user")
    parser.add_argument("--out", type=Path, default=None, help="write the results here too")
    return parser


if __name__ == "__main__":
    arguments = _parser().parse_args()
    found = asyncio.run(main(arguments))
    if arguments.out is not None:
        arguments.out.write_text(json.dumps(found, indent=2) + "\n")
