"""What happens to records of the events topic, without Kafka or Redis.

:func:`admit` decides for one record (accept or raise a :class:`RejectedInput`);
:func:`admit_batch` does it for a batch, each record seeing the state its predecessors
left; the builders make the messages the agent sends for either outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from protos import events_pb2
from streams.errors import Duplicate, RejectedInput, UnknownItem
from streams.history import Interaction, UserState, accepted_offset, fold, interaction_weight
from streams.validation import EventLimits, parse_event

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Policy:
    """Limits and weights applied to every event."""

    limits: EventLimits
    weights: Mapping[int, float]
    history_length: int
    dedupe_window: int


class Accepted(NamedTuple):
    """An accepted event, its catalog item and the user's state after it.

    ``replay`` marks a record read again after a crash or a rebalance that the user's
    state already holds (same event id, same offset): its earlier output was in a
    transaction that did not commit, so it is sent again; the state is left as it was.
    """

    event: events_pb2.Event
    item: events_pb2.Item
    weight: float
    state: UserState
    replay: bool


def admit(
    record: Record,
    *,
    items: Callable[[str], events_pb2.Item | None],
    state_of: Callable[[str], UserState],
    now_ms: int,
    policy: Policy,
    accepted_at: Callable[[str, UserState, str], int | None] | None = None,
) -> Accepted:
    """Validate, join with the catalog and dedupe one record; raises RejectedInput.
    ``accepted_at(user_id, state, event_id)`` finds an event id among the state's recent
    ones (by default a scan of ``state.accepted``)."""
    event = parse_event(record.value, record.key, now_ms=now_ms, limits=policy.limits)
    item = items(event.item_id)
    if item is None:
        raise UnknownItem(f"item {event.item_id[:200]!r} is not in the catalog")
    state = state_of(event.user_id)
    weight = interaction_weight(event.type, event.value, policy.weights)
    if accepted_at is None:
        seen_at = accepted_offset(state, event.event_id)
    else:
        seen_at = accepted_at(event.user_id, state, event.event_id)
    if seen_at == record.offset:
        return Accepted(event, item, weight, state, replay=True)
    if seen_at is not None:
        raise Duplicate(f"event {event.event_id[:200]!r} was accepted at offset {seen_at}")
    interaction = Interaction(event.item_id, event.type, event.timestamp_ms, weight)
    state = fold(
        state,
        interaction,
        event_id=event.event_id,
        offset=record.offset,
        history_length=policy.history_length,
        dedupe_window=policy.dedupe_window,
    )
    return Accepted(event, item, weight, state, replay=False)


class Rejected(NamedTuple):
    """A record that goes to the dead-letter topic."""

    reason: str
    detail: str


@dataclass
class Batch:
    """Outcomes in record order, and each changed user's newest state with the partition
    of the record that produced it (where its changelog entry belongs)."""

    outcomes: list[tuple[Record, Accepted | Rejected]] = field(default_factory=list)
    changed: dict[str, tuple[int, UserState]] = field(default_factory=dict)


def admit_batch(
    records: Sequence[Record],
    *,
    items: Callable[[str], events_pb2.Item | None],
    state_of: Callable[[str], UserState],
    now_ms: int,
    policy: Policy,
) -> Batch:
    """:func:`admit` for each record; one record's failure never affects another's."""
    batch = Batch()
    # Per user of the batch, its recent event ids -> offsets, oldest first, kept as fold
    # keeps ``state.accepted`` (the newest dedupe_window): one dict built per user, where
    # a scan of the window per event would cost dedupe_window comparisons each.
    recent: dict[str, dict[str, int]] = {}

    def current(user_id: str) -> UserState:
        changed = batch.changed.get(user_id)
        return changed[1] if changed is not None else state_of(user_id)

    def accepted_at(user_id: str, state: UserState, event_id: str) -> int | None:
        ids = recent.get(user_id)
        if ids is None:
            ids = recent[user_id] = dict(state.accepted)
        return ids.get(event_id)

    for record in records:
        outcome: Accepted | Rejected
        try:
            outcome = admit(record, items=items, state_of=current, now_ms=now_ms, policy=policy,
                            accepted_at=accepted_at)
        except RejectedInput as error:
            outcome = Rejected(error.reason, str(error))
        except Exception as error:
            log.exception("record %s[%s]@%s failed", record.topic, record.partition, record.offset)
            outcome = Rejected(INTERNAL_ERROR, repr(error))
        else:
            if not outcome.replay:
                user_id = outcome.event.user_id
                batch.changed[user_id] = (record.partition, outcome.state)
                ids = recent[user_id]
                ids[outcome.event.event_id] = record.offset
                if len(ids) > policy.dedupe_window:
                    del ids[next(iter(ids))]
        batch.outcomes.append((record, outcome))
    return batch


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
