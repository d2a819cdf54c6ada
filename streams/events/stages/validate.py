"""Stage 1 of a batch: every record decoded and checked (:mod:`streams.validation`)."""

from __future__ import annotations

from collections.abc import Sequence

from protos import events_pb2
from streams.records import Record
from streams.validation import EventLimits, parse_event

# A record's event, or the error it failed with (raised again in the record's turn of
# admission, so a record's failure is reported where its outcome goes).
Parsed = events_pb2.Event | Exception


def validate(records: Sequence[Record], *, now_ms: int, limits: EventLimits) -> list[Parsed]:
    """The event of each record, in record order; one record's failure never affects
    another's."""
    events: list[Parsed] = []
    for record in records:
        try:
            events.append(parse_event(record.value, record.key, now_ms=now_ms, limits=limits))
        except Exception as error:
            events.append(error)
    return events
