"""Errors the streams worker raises on purpose.

A :class:`RejectedInput` carries the dead-letter reason of docs/contracts.md; the handlers
turn it into a ``DeadLetter`` and go on with the next record.
"""

from __future__ import annotations


class StreamsError(Exception):
    """Root of every error this package raises on purpose."""


class ArtifactError(StreamsError):
    """The artifact store names a model version that cannot be read."""


class ModelLoadError(StreamsError):
    """The item encoder could not be loaded."""


class TopicSetupError(StreamsError):
    """A topic is missing and cannot be created, or is shaped against the contract."""


class RejectedInput(StreamsError):
    """A record that cannot be accepted; ``reason`` is its dead-letter reason."""

    reason = ""


class Oversized(RejectedInput):
    """The payload is larger than the configured limit."""

    reason = "oversized"


class Undecodable(RejectedInput):
    """The bytes are not the expected protobuf message, binary or JSON."""

    reason = "undecodable"


class MissingField(RejectedInput):
    """A required field is empty."""

    reason = "missing_field"


class UnknownEventType(RejectedInput):
    """The event type is unspecified or not a known ``EventType``."""

    reason = "unknown_event_type"


class BadTimestamp(RejectedInput):
    """The event time is before 1995 or too far in the future."""

    reason = "bad_timestamp"


class BadValue(RejectedInput):
    """The event's value is not a finite number within the allowed magnitude."""

    reason = "bad_value"


class KeyMismatch(RejectedInput):
    """The record key is not the event's user id."""

    reason = "key_mismatch"


class UnknownItem(RejectedInput):
    """The event's item is not in the catalog."""

    reason = "unknown_item"


class Duplicate(RejectedInput):
    """An event with this event id was already accepted."""

    reason = "duplicate"


class TooOld(RejectedInput):
    """The event time is older than the dedupe window before the partition's watermark."""

    reason = "too_old"
