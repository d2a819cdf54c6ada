"""A consumed record as both paths (items, events) handle it, an output record, and the
dead letter made of a record that is not accepted."""

from __future__ import annotations

import time
from typing import NamedTuple

from protos import events_pb2

# A record whose handling failed for a reason of the worker's own (a bug, not bad input).
# It is dead-lettered rather than lost: Faust acknowledges a record whose agent raised.
INTERNAL_ERROR = "internal_error"


class Record(NamedTuple):
    """A consumed Kafka record, as far as processing needs it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Rejected(NamedTuple):
    """A record that goes to the dead-letter topic."""

    reason: str
    detail: str


# An output record: topic, partition, key, value (None: a tombstone). Without a partition,
# a keyed record goes where the default partitioner (murmur2 of the key, as Kafka's Java
# client) puts it.
Output = tuple[str, int | None, bytes | None, bytes | None]


def now_ms() -> int:
    """Wall-clock time in milliseconds."""
    return time.time_ns() // 1_000_000


def dead_letter(
    record: Record, *, reason: str, detail: str, now_ms: int
) -> events_pb2.DeadLetter:
    """The DLQ message for a record that was not accepted: original bytes, reason, origin."""
    return events_pb2.DeadLetter(
        payload=record.value or b"",
        key=record.key or b"",
        reason=reason,
        detail=detail[:1000],
        origin_topic=record.topic,
        origin_partition=record.partition,
        origin_offset=record.offset,
        failed_at_ms=now_ms,
    )
