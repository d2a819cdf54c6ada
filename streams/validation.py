"""Decode and check raw records; every failure is a :class:`RejectedInput` with its reason.

A record of ``events`` or ``items`` is the protobuf message in its binary encoding or in
its JSON mapping, told apart per record (:mod:`contracts.records`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from contracts.records import decode_record
from protos import events_pb2
from streams.errors import (
    BadTimestamp,
    BadValue,
    KeyMismatch,
    MissingField,
    Oversized,
    Undecodable,
    UnknownEventType,
)

M = TypeVar("M", bound=Message)
MIN_TIMESTAMP_MS = 788_918_400_000  # 1995-01-01T00:00:00Z
KNOWN_EVENT_TYPES = frozenset(
    value for value in events_pb2.EventType.values() if value != events_pb2.EVENT_TYPE_UNSPECIFIED
)


def decode_message(payload: bytes, message: type[M]) -> M:
    """The message in a record value, binary or JSON (:mod:`contracts.records`); raises
    Undecodable."""
    try:
        return decode_record(payload, message)
    except DecodeError as error:
        raise Undecodable(str(error)) from None


@dataclass(frozen=True)
class EventLimits:
    """What an acceptable event looks like beyond its schema. ``max_abs_value`` bounds
    ``Event.value``: a rating's weight scales with it, and an infinite or NaN weight would
    poison popularity scores and user vectors."""

    max_bytes: int
    max_future_skew_ms: int
    max_abs_value: float = 1e9


def decode_event(payload: bytes | None, limits: EventLimits) -> events_pb2.Event:
    """The ``Event`` of a record value (binary or JSON); raises Oversized or Undecodable."""
    if payload is None:
        raise Undecodable("the record has no value")
    if len(payload) > limits.max_bytes:
        raise Oversized(f"{len(payload)} bytes > limit {limits.max_bytes}")
    return decode_message(payload, events_pb2.Event)


def validate_event(
    event: events_pb2.Event, key: bytes | None, *, now_ms: int, limits: EventLimits
) -> None:
    """Raise the first contract violation of a decoded event, checked in the contract's order."""
    user_id = event.user_id
    if not (event.event_id and user_id and event.item_id and event.timestamp_ms):
        missing = [
            name
            for name, present in (
                ("event_id", bool(event.event_id)),
                ("user_id", bool(user_id)),
                ("item_id", bool(event.item_id)),
                ("timestamp_ms", event.timestamp_ms != 0),
            )
            if not present
        ]
        raise MissingField(f"empty: {', '.join(missing)}")
    if event.type not in KNOWN_EVENT_TYPES:
        raise UnknownEventType(f"type {event.type} is not a known EventType")
    timestamp_ms = event.timestamp_ms
    if timestamp_ms < MIN_TIMESTAMP_MS:
        raise BadTimestamp(f"timestamp_ms {timestamp_ms} is before 1995-01-01")
    if timestamp_ms > now_ms + limits.max_future_skew_ms:
        raise BadTimestamp(
            f"timestamp_ms {timestamp_ms} is more than {limits.max_future_skew_ms} ms "
            f"ahead of now ({now_ms})"
        )
    if not math.isfinite(event.value) or abs(event.value) > limits.max_abs_value:
        raise BadValue(f"value {event.value!r} is not a finite number within "
                       f"±{limits.max_abs_value:g}")
    # A record without the user's key lands on any partition: the user's events would lose
    # their order and the dedupe and delivery bookkeeping, which are per partition.
    if key is None or key != user_id.encode():
        shown = "missing" if key is None else repr(key[:64])
        raise KeyMismatch(f"key {shown} is not user_id {user_id[:64]!r}")


def parse_event(
    payload: bytes | None, key: bytes | None, *, now_ms: int, limits: EventLimits
) -> events_pb2.Event:
    """Decode and validate a record of the events topic."""
    event = decode_event(payload, limits)
    validate_event(event, key, now_ms=now_ms, limits=limits)
    return event


def parse_item(payload: bytes, *, max_bytes: int) -> events_pb2.Item:
    """Decode a record of the items topic (binary or JSON); the item id must be set."""
    if len(payload) > max_bytes:
        raise Oversized(f"{len(payload)} bytes > limit {max_bytes}")
    item = decode_message(payload, events_pb2.Item)
    if not item.item_id:
        raise MissingField("empty: item_id")
    return item
