"""The worker after a restart: user state and catalog come back, nothing is processed twice."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from streams_harness import Running

from protos import events_pb2

pytestmark = pytest.mark.integration


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def click(user: str, item: str, event_id: str) -> bytes:
    return events_pb2.Event(
        event_id=event_id, user_id=user, item_id=item, type=events_pb2.CLICK,
        timestamp_ms=now_ms(),
    ).SerializeToString()


def vector_of(running: Running, item_id: str) -> None:
    def found(records: list[ConsumerRecord]) -> bool | None:
        ids = {events_pb2.ItemVector.FromString(r.value).item_id for r in records}
        return True if item_id in ids else None

    running.logs["item_vectors"].wait_for(found, running.worker, what=f"vector of {item_id}")


def outputs_of(running: Running, user: str, enriched: int, dead: int) -> tuple[list, list]:
    """Wait until `user` has at least the given numbers of enriched events and dead letters."""

    def found(_: list[ConsumerRecord]) -> tuple[list, list] | None:
        running.logs["dlq"].poll()
        mine_enriched = [
            events_pb2.EnrichedEvent.FromString(r.value)
            for r in running.logs["enriched"].records if r.key == user.encode()
        ]
        mine_dead = [
            events_pb2.DeadLetter.FromString(r.value)
            for r in running.logs["dlq"].records if r.key == user.encode()
        ]
        done = len(mine_enriched) >= enriched and len(mine_dead) >= dead
        return (mine_enriched, mine_dead) if done else None

    return running.logs["enriched"].wait_for(found, running.worker, what=f"outputs of {user}")


def test_state_catalog_and_offsets_survive_a_restart(running: Running) -> None:
    item = f"item-{uuid.uuid4().hex[:8]}"
    user = f"user-{uuid.uuid4().hex[:8]}"
    heat = events_pb2.Item(item_id=item, title="Heat (1995)")
    heat_partition, _ = running.send("items", item, heat.SerializeToString())
    vector_of(running, item)
    running.send("events", user, click(user, item, "first"))
    outputs_of(running, user, enriched=1, dead=0)

    assert running.worker.stop() == 0
    # Published while the worker is down: handled once it is back. In the partition of an
    # item already handled, it is the record at the committed offset, which Faust can take
    # from the broker before its seek to the committed offsets and not hand over.
    late_item = f"item-{uuid.uuid4().hex[:8]}"
    running.send("items", late_item, events_pb2.Item(item_id=late_item, title="Casino (1995)")
                 .SerializeToString(), partition=heat_partition)
    restart_s = running.worker.start()
    print(f"worker ready {restart_s:.1f} s after relaunch")

    vector_of(running, late_item)
    running.send("events", user, click(user, item, "first"))  # the table remembers it
    running.send("events", user, click(user, item, "second"))  # the catalog knows the item
    enriched, dead = outputs_of(running, user, enriched=2, dead=1)
    time.sleep(2)  # long enough for a wrongly re-processed record to show up
    enriched, dead = outputs_of(running, user, enriched=2, dead=1)
    assert [e.event.event_id for e in enriched] == ["first", "second"]
    assert [(d.reason, events_pb2.Event.FromString(d.payload).event_id) for d in dead] == [
        ("duplicate", "first"),
    ]
    seen = running.redis.zrange(running.worker.keys.seen(user), 0, -1)
    assert seen == [item.encode()]
