"""A re-imported data set is dead-lettered whole as ``duplicate``, however many events its
users had since, and after a crash of the worker too; nothing it holds changes."""

from __future__ import annotations

import time
import uuid

import pytest
from streams_harness import Running, outputs, publish_items

from protos import events_pb2

pytestmark = pytest.mark.integration

USERS = 3
EVENTS_PER_USER = 130  # more than the 100 recent event ids a user state remembers
TYPES = [events_pb2.VIEW, events_pb2.CLICK, events_pb2.ADD_TO_CART, events_pb2.PURCHASE,
         events_pb2.RATING]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def data_set(tag: str, items: list[str]) -> list[tuple[str, bytes]]:
    """(user, value) of every event, in event-time order as `ingest replay` sends them."""
    start = now_ms() - USERS * EVENTS_PER_USER * 1000
    records = []
    for k in range(USERS * EVENTS_PER_USER):
        user = f"{tag}-user-{k % USERS}"
        event = events_pb2.Event(
            event_id=f"{tag}-row-{k}", user_id=user, item_id=items[k % len(items)],
            type=TYPES[k % len(TYPES)], value=4.0 if TYPES[k % len(TYPES)] == events_pb2.RATING
            else 0.0, timestamp_ms=start + k * 1000,
        )
        records.append((user, event.SerializeToString()))
    return records


def redis_state(running: Running, tag: str, items: list[str]) -> dict[str, object]:
    """Everything the worker keeps in Redis about the tag's users and items."""
    client, prefix = running.redis, running.worker.redis_prefix
    state: dict[str, object] = {}
    for key in sorted(client.scan_iter(match=f"{prefix}*{tag}-*")):
        kind = client.type(key)
        if kind == b"zset":
            state[key.decode()] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"hash":
            state[key.decode()] = client.hgetall(key)
    keys = running.worker.keys
    for key in (keys.popular(), keys.trending("1h"), keys.trending("24h")):
        state[key] = [client.zscore(key, item) for item in items]
    return state


def import_twice(running: Running, *, restart: bool) -> None:
    tag = "d" + uuid.uuid4().hex[:8]
    items = publish_items(running, tag, 7)
    records = data_set(tag, items)
    for user, value in records:
        running.send("events", user, value)
    first, dead = outputs(running, tag, enriched=len(records), dead=0)
    assert len(first) == len(records) and not dead
    before = redis_state(running, tag, items)
    assert len([k for k in before if ":uv:" in k]) == USERS

    if restart:
        running.worker.kill()  # a crash: the remembered ids come back from the changelog
        running.worker.start()
    for user, value in records:  # the operator imports the same file again
        running.send("events", user, value)
    _, dead = outputs(running, tag, enriched=len(records), dead=len(records))
    time.sleep(2.0)  # many commit intervals: a wrongly accepted record would show by now
    enriched, dead = outputs(running, tag, enriched=len(records), dead=len(records))
    assert len(enriched) == len(records)
    assert len(dead) == len(records)
    assert {letter.reason for letter in dead} == {"duplicate"}
    assert sorted(events_pb2.Event.FromString(letter.payload).event_id for letter in dead) == \
        sorted(events_pb2.Event.FromString(value).event_id for _, value in records)
    assert redis_state(running, tag, items) == before


def test_a_reimported_data_set_is_all_duplicate(running: Running) -> None:
    import_twice(running, restart=False)


def test_a_reimport_after_a_crash_is_all_duplicate(running: Running) -> None:
    import_twice(running, restart=True)
