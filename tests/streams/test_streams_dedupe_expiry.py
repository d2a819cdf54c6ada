"""Ids older than the dedupe window are forgotten, their changelog records tombstoned,
and an event that old is dead-lettered ``too_old``, before and after a crash."""

from __future__ import annotations

import time
import uuid

import pytest
from streams_harness import Running, committed_records, outputs, publish_items

from protos import events_pb2
from streams.seen import decode_record

pytestmark = pytest.mark.integration

HOUR_MS = 3600 * 1000
WORKER_ENV = {"STREAMREC_STREAMS_DEDUPE_WINDOW_S": "3600"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def click(user: str, item: str, event_id: str, timestamp_ms: int) -> bytes:
    return events_pb2.Event(event_id=event_id, user_id=user, item_id=item,
                            type=events_pb2.CLICK, timestamp_ms=timestamp_ms).SerializeToString()


def changelog(running: Running) -> list[tuple[bytes, bytes | None]]:
    """(key, value) of every committed record of the dedupe changelog, in order."""
    env = running.worker.env
    return committed_records(env["STREAMREC_STREAMS_KAFKA_BOOTSTRAP"],
                             f"{env['STREAMREC_STREAMS_APP_ID']}-dedupe-changelog")


def test_ids_beyond_the_window_are_forgotten_and_too_old(running: Running) -> None:
    tag = "x" + uuid.uuid4().hex[:8]
    (item,) = publish_items(running, tag, 1)
    user = f"{tag}-user"
    start = now_ms() - 5 * HOUR_MS
    # One record at a time, so that many batches make many records, merged and expired.
    old = [f"{tag}-old-{k}" for k in range(80)]
    for k, event_id in enumerate(old):
        running.send("events", user, click(user, item, event_id, start + k * 1000))
    outputs(running, tag, enriched=len(old), dead=0)
    # Ninety minutes later in event time: the old ids are more than the window behind.
    running.send("events", user, click(user, item, f"{tag}-new", start + 90 * 60_000))
    outputs(running, tag, enriched=len(old) + 1, dead=0)

    running.send("events", user, click(user, item, old[0], start))
    running.send("events", user, click(user, item, f"{tag}-new", start + 90 * 60_000))
    running.send("events", user, click(user, item, f"{tag}-late", start + 20 * 60_000))
    _, dead = outputs(running, tag, enriched=len(old) + 1, dead=3)
    assert [d.reason for d in dead] == ["too_old", "duplicate", "too_old"]

    records = changelog(running)
    assert any(value is None for _, value in records), "no record was tombstoned"
    live: dict[bytes, bytes | None] = {}
    for key, value in records:
        live[key] = value
    held = sum(len(decode_record(v).hashes) for v in live.values() if v is not None)
    assert held < len(old)  # the expired ids are gone from what a restore reads

    running.worker.kill()
    running.worker.start()  # the watermark and the new id come back from the changelog
    running.send("events", user, click(user, item, old[1], start + 1000))
    running.send("events", user, click(user, item, f"{tag}-new", start + 90 * 60_000))
    enriched, dead = outputs(running, tag, enriched=len(old) + 1, dead=5)
    time.sleep(2.0)
    enriched, dead = outputs(running, tag, enriched=len(old) + 1, dead=5)
    assert len(enriched) == len(old) + 1
    assert [d.reason for d in dead] == ["too_old", "duplicate", "too_old", "too_old", "duplicate"]
