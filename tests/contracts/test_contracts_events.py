"""contracts.events: the structural rules serving and streams both apply to an Event."""

from __future__ import annotations

import pytest

from contracts.events import (
    MIN_TIMESTAMP_MS,
    EventLimits,
    event_violations,
    size_violation,
)
from protos import events_pb2

NOW_MS = 1_790_000_000_000
LIMITS = EventLimits(max_bytes=100, max_future_skew_ms=60_000)
VALID = events_pb2.Event(event_id="e1", user_id="u1", item_id="i1", type=events_pb2.CLICK,
                         timestamp_ms=NOW_MS)


def _event(**scalars: object) -> events_pb2.Event:
    """VALID with some scalar fields changed."""
    event = events_pb2.Event()
    event.CopyFrom(VALID)
    for name, value in scalars.items():
        setattr(event, name, value)
    return event


def _found(event: events_pb2.Event) -> list[tuple[str, str]]:
    return [(v.field, v.reason) for v in event_violations(event, now_ms=NOW_MS, limits=LIMITS)]


def test_an_acceptable_event_breaks_nothing() -> None:
    assert _found(_event()) == []
    assert _found(_event(timestamp_ms=MIN_TIMESTAMP_MS, value=-1e9)) == []
    assert _found(_event(timestamp_ms=NOW_MS + LIMITS.max_future_skew_ms, value=1e9)) == []


def test_every_broken_rule_is_listed_once_per_field_in_the_contract_order() -> None:
    empty = events_pb2.Event(type=99, value=float("inf"))
    assert _found(empty) == [
        ("event_id", "missing_field"), ("user_id", "missing_field"), ("item_id", "missing_field"),
        ("timestamp_ms", "missing_field"),  # not also bad_timestamp
        ("type", "unknown_event_type"), ("value", "bad_value"),
    ]


@pytest.mark.parametrize("timestamp_ms", [-1, MIN_TIMESTAMP_MS - 1, NOW_MS + 60_001])
def test_timestamps_outside_the_window_are_bad(timestamp_ms: int) -> None:
    assert _found(_event(timestamp_ms=timestamp_ms)) == [("timestamp_ms", "bad_timestamp")]


def test_size_is_checked_against_the_limit_inclusively() -> None:
    assert size_violation(100, LIMITS) is None
    violation = size_violation(101, LIMITS)
    assert violation is not None
    assert (violation.field, violation.reason, violation.description) == (
        "", "oversized", "101 bytes > limit 100")
