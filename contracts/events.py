"""What a structurally acceptable ``Event`` is, checked without a catalog or any state.

One implementation of the rules of docs/contracts.md §2: serving applies them to every
event of a ``TrackEvents`` call before anything is written, streams to every record of
``events`` (and dead-letters what breaks them). Checks that need state, such as an item
missing from the catalog or a repeated event id, stay with streams.

A :class:`Violation`'s ``reason`` is its dead-letter reason (``DeadLetter.reason``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from protos import events_pb2

MIN_TIMESTAMP_MS = 788_918_400_000  # 1995-01-01T00:00:00Z
MAX_EVENT_BYTES = 64 * 1024  # default size limit of one serialized Event
MAX_FUTURE_SKEW_MS = 5 * 60 * 1000  # default: how far ahead of the checker's clock an event may be
MAX_ABS_VALUE = 1e9
KNOWN_EVENT_TYPES = frozenset(
    value for value in events_pb2.EventType.values() if value != events_pb2.EVENT_TYPE_UNSPECIFIED
)

OVERSIZED = "oversized"
MISSING_FIELD = "missing_field"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
BAD_TIMESTAMP = "bad_timestamp"
BAD_VALUE = "bad_value"


@dataclass(frozen=True)
class EventLimits:
    """What an acceptable event looks like beyond its schema. ``max_abs_value`` bounds
    ``Event.value``: a rating's weight scales with it, and an infinite or NaN weight would
    poison popularity scores and user vectors."""

    max_bytes: int
    max_future_skew_ms: int
    max_abs_value: float = MAX_ABS_VALUE


@dataclass(frozen=True)
class Violation:
    """One broken rule: the ``Event`` field at fault (empty: the event as a whole), the
    dead-letter reason, and a sentence naming no caller data beyond numbers."""

    field: str
    reason: str
    description: str


def size_violation(n_bytes: int, limits: EventLimits) -> Violation | None:
    """The violation of a serialized event of `n_bytes`, if it is over the limit."""
    if n_bytes > limits.max_bytes:
        return Violation("", OVERSIZED, f"{n_bytes} bytes > limit {limits.max_bytes}")
    return None


def timestamp_violation(timestamp_ms: int, now_ms: int, max_future_skew_ms: int) -> Violation | None:
    """A time before 1995 or further ahead of now than the skew allows: the rule of every
    record's ``timestamp_ms`` (events and relations)."""
    if timestamp_ms < MIN_TIMESTAMP_MS:
        return Violation("timestamp_ms", BAD_TIMESTAMP, f"timestamp_ms {timestamp_ms} is before 1995-01-01")
    if timestamp_ms > now_ms + max_future_skew_ms:
        return Violation("timestamp_ms", BAD_TIMESTAMP,
                         f"timestamp_ms {timestamp_ms} is more than {max_future_skew_ms} ms "
                         f"ahead of now ({now_ms})")
    return None


def event_violations(event: events_pb2.Event, *, now_ms: int, limits: EventLimits) -> list[Violation]:
    """Every rule `event` breaks, at most one per field, in the contract's order: empty
    required fields, the type, the timestamp, the value. Empty when it is acceptable."""
    found = [
        Violation(name, MISSING_FIELD, f"{name} is empty")
        for name, present in (
            ("event_id", bool(event.event_id)),
            ("user_id", bool(event.user_id)),
            ("item_id", bool(event.item_id)),
            ("timestamp_ms", event.timestamp_ms != 0),
        )
        if not present
    ]
    if event.type not in KNOWN_EVENT_TYPES:
        found.append(Violation("type", UNKNOWN_EVENT_TYPE,
                               f"type {event.type} is not a known EventType"))
    late_or_early = timestamp_violation(event.timestamp_ms, now_ms, limits.max_future_skew_ms)
    if event.timestamp_ms and late_or_early is not None:  # 0 is reported as missing
        found.append(late_or_early)
    if not math.isfinite(event.value) or abs(event.value) > limits.max_abs_value:
        found.append(Violation("value", BAD_VALUE,
                               f"value {event.value!r} is not a finite number within "
                               f"±{limits.max_abs_value:g}"))
    return found
