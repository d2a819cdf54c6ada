"""Decode and check raw records; every failure is a :class:`RejectedInput` with its reason.

A record of ``events`` or ``items`` is the protobuf message in its binary encoding or in
its JSON mapping, told apart per record (:mod:`contracts.records`).
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from contracts.events import (
    KNOWN_EVENT_TYPES,
    MIN_TIMESTAMP_MS,
    MISSING_FIELD,
    EventLimits,
    event_violations,
    size_violation,
)
from contracts.records import decode_record
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

__all__ = ["KNOWN_EVENT_TYPES", "MIN_TIMESTAMP_MS", "EventLimits", "decode_event", "decode_message",
           "parse_event", "parse_item", "validate_event"]

_REJECTED: dict[str, type[RejectedInput]] = {
    error.reason: error for error in (MissingField, UnknownEventType, BadTimestamp, BadValue)
}

M = TypeVar("M", bound=Message)


def decode_message(payload: bytes, message: type[M]) -> M:
    """The message in a record value, binary or JSON (:mod:`contracts.records`); raises
    Undecodable."""
    try:
        return decode_record(payload, message)
    except DecodeError as error:
        raise Undecodable(str(error)) from None


def decode_event(payload: bytes | None, limits: EventLimits) -> events_pb2.Event:
    """The ``Event`` of a record value (binary or JSON); raises Oversized or Undecodable."""
    if payload is None:
        raise Undecodable("the record has no value")
    too_big = size_violation(len(payload), limits)
    if too_big is not None:
        raise Oversized(too_big.description)
    return decode_message(payload, events_pb2.Event)


def validate_event(
    event: events_pb2.Event, key: bytes | None, *, now_ms: int, limits: EventLimits
) -> None:
    """Raise the first contract violation of a decoded event, checked in the contract's
    order (contracts.events), then the record key."""
    violations = event_violations(event, now_ms=now_ms, limits=limits)
    if violations:
        first = violations[0]
        if first.reason == MISSING_FIELD:
            missing = [v.field for v in violations if v.reason == MISSING_FIELD]
            raise MissingField(f"empty: {', '.join(missing)}")
        raise _REJECTED[first.reason](first.description)
    user_id = event.user_id
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
