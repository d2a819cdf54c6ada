"""Stage 6 of a batch: each record's outcome as the record it produces, an enriched event
or a dead letter, in its partition's transaction."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from protos import events_pb2
from streams.events.stages.admit import Accepted, Rejected
from streams.records import Output, Record, dead_letter

log = logging.getLogger(__name__)


def enriched_event(
    record: Record, accepted: Accepted, *, now_ms: int
) -> events_pb2.EnrichedEvent:
    """The event-log message for an accepted event."""
    return events_pb2.EnrichedEvent(
        event=accepted.event,
        item=accepted.item,
        weight=accepted.weight,
        processed_at_ms=now_ms,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
    )


def outcome_records(
    outcomes: Sequence[tuple[Record, Accepted | Rejected]], *, enriched: str, dlq: str,
    now_ms: int,
) -> dict[int, list[Output]]:
    """Per partition of events, in record order: the enriched event (topic `enriched`,
    keyed by user) of each accepted record, the dead letter (topic `dlq`, the record's
    key) of each rejected one."""
    records: dict[int, list[Output]] = {}
    for record, outcome in outcomes:
        outputs = records.setdefault(record.partition, [])
        if isinstance(outcome, Accepted):
            message = enriched_event(record, outcome, now_ms=now_ms)
            outputs.append((enriched, None, outcome.event.user_id.encode(),
                            message.SerializeToString()))
        else:
            log.debug("event %s[%s]@%s rejected: %s %s", record.topic, record.partition,
                      record.offset, outcome.reason, outcome.detail)
            letter = dead_letter(record, reason=outcome.reason, detail=outcome.detail,
                                 now_ms=now_ms)
            outputs.append((dlq, None, record.key, letter.SerializeToString()))
    return records
