"""streams.validation: every dead-letter reason that needs no catalog or state."""

from __future__ import annotations

import pytest

from protos import events_pb2
from streams.errors import (
    BadTimestamp,
    BadValue,
    KeyMismatch,
    MissingField,
    Oversized,
    RejectedInput,
    Undecodable,
    UnknownEventType,
)
from streams.validation import MIN_TIMESTAMP_MS, EventLimits, parse_event, parse_item

NOW_MS = 1_790_000_000_000
LIMITS = EventLimits(max_bytes=1024, max_future_skew_ms=60_000)


def event(**changes: object) -> events_pb2.Event:
    fields: dict[str, object] = {
        "event_id": "e1",
        "user_id": "u1",
        "item_id": "i1",
        "type": events_pb2.CLICK,
        "timestamp_ms": NOW_MS - 1000,
    }
    fields.update(changes)
    return events_pb2.Event(**fields)  # type: ignore[arg-type]


def parse(message: events_pb2.Event, key: bytes | None = b"u1") -> events_pb2.Event:
    return parse_event(message.SerializeToString(), key, now_ms=NOW_MS, limits=LIMITS)


def test_valid_event_is_returned_decoded() -> None:
    parsed = parse(event(value=4.5))
    assert (parsed.event_id, parsed.user_id, parsed.item_id) == ("e1", "u1", "i1")
    assert parsed.value == 4.5


def test_missing_key_is_a_mismatch() -> None:
    with pytest.raises(KeyMismatch):
        parse(event(), key=None)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\xff\xff\xff\xff", Undecodable),
        (b"garbage-bytes", Undecodable),
        (None, Undecodable),
        (b"\x0a" + b"x" * 2000, Oversized),
    ],
)
def test_bad_bytes(payload: bytes | None, error: type[RejectedInput]) -> None:
    with pytest.raises(error):
        parse_event(payload, b"u1", now_ms=NOW_MS, limits=LIMITS)


def test_oversized_is_checked_before_decoding() -> None:
    big = event(properties={"blob": "x" * 2000}).SerializeToString()
    with pytest.raises(Oversized) as raised:
        parse_event(big, b"u1", now_ms=NOW_MS, limits=LIMITS)
    assert raised.value.reason == "oversized"


@pytest.mark.parametrize("field", ["event_id", "user_id", "item_id", "timestamp_ms"])
def test_each_required_field(field: str) -> None:
    empty = {"timestamp_ms": 0} if field == "timestamp_ms" else {field: ""}
    key = None if field == "user_id" else b"u1"
    with pytest.raises(MissingField, match=field) as raised:
        parse(event(**empty), key=key)
    assert raised.value.reason == "missing_field"


@pytest.mark.parametrize("kind", [events_pb2.EVENT_TYPE_UNSPECIFIED, 42])
def test_unknown_event_type(kind: int) -> None:
    with pytest.raises(UnknownEventType) as raised:
        parse(event(type=kind))
    assert raised.value.reason == "unknown_event_type"


@pytest.mark.parametrize(
    "timestamp_ms",
    [MIN_TIMESTAMP_MS - 1, 1, -5, NOW_MS + LIMITS.max_future_skew_ms + 1],
)
def test_bad_timestamp(timestamp_ms: int) -> None:
    with pytest.raises(BadTimestamp) as raised:
        parse(event(timestamp_ms=timestamp_ms))
    assert raised.value.reason == "bad_timestamp"


@pytest.mark.parametrize("timestamp_ms", [MIN_TIMESTAMP_MS, NOW_MS + LIMITS.max_future_skew_ms])
def test_timestamp_bounds_are_inclusive(timestamp_ms: int) -> None:
    assert parse(event(timestamp_ms=timestamp_ms)).timestamp_ms == timestamp_ms


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e9 + 1, -2e9])
def test_bad_value(value: float) -> None:
    with pytest.raises(BadValue) as raised:
        parse(event(type=events_pb2.RATING, value=value))
    assert raised.value.reason == "bad_value"


@pytest.mark.parametrize("value", [0.0, -1e9, 1e9, 4.5])
def test_value_bounds_are_inclusive(value: float) -> None:
    assert parse(event(value=value)).value == value


@pytest.mark.parametrize("key", [b"u2", b""])
def test_key_mismatch(key: bytes) -> None:
    with pytest.raises(KeyMismatch) as raised:
        parse(event(), key=key)
    assert raised.value.reason == "key_mismatch"


def test_missing_field_wins_over_later_checks() -> None:
    with pytest.raises(MissingField):
        parse(event(item_id="", type=0, timestamp_ms=NOW_MS * 2), key=b"other")


def test_parse_item() -> None:
    item = events_pb2.Item(item_id="i1", title="Toy Story (1995)")
    assert parse_item(item.SerializeToString(), max_bytes=1024).title == "Toy Story (1995)"
    with pytest.raises(MissingField):
        parse_item(events_pb2.Item(title="no id").SerializeToString(), max_bytes=1024)
    with pytest.raises(Undecodable):
        parse_item(b"\xff\xff", max_bytes=1024)
    with pytest.raises(Oversized):
        parse_item(item.SerializeToString(), max_bytes=4)
