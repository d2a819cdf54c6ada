"""Stage 2 of a batch: admission of its records, without Kafka or Redis.

:func:`admit` decides for one record (accept or raise a :class:`RejectedInput`): the
catalog join, the dedupe window's verdict (too old, remembered), the user's recent ids
(a duplicate, or a record read again at its own offset) and the fold into the user's
history. :func:`admit_batch` does it for a batch, each record seeing the state its
predecessors left, with the event ids of the dedupe window (:mod:`streams.seen`) looked
up for the whole batch at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from protos import events_pb2
from streams.errors import Duplicate, RejectedInput, TooOld, UnknownItem
from streams.events.ports import DedupeWindows
from streams.events.stages.validate import Parsed, validate
from streams.history import Interaction, UserState, accepted_offset, fold, interaction_weight
from streams.records import INTERNAL_ERROR, Output, Record, Rejected
from streams.seen import Hashes, SeenIds, event_key, id_hashes
from streams.validation import EventLimits, parse_event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    """Limits and weights applied to every event."""

    limits: EventLimits
    weights: Mapping[int, float]
    history_length: int
    dedupe_window: int


class Window(NamedTuple):
    """What the dedupe window says about one event: accepted before within the window
    (``remembered``), and the oldest event time it still vouches for (None: any)."""

    remembered: bool
    oldest_ms: int | None


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
    event: events_pb2.Event | None = None,
    window: Window | None = None,
) -> Accepted:
    """Validate, join with the catalog and dedupe one record; raises RejectedInput.
    ``accepted_at(user_id, state, event_id)`` finds an event id among the state's recent
    ones (by default a scan of ``state.accepted``); `event` is the record's, if parsed
    already; `window` is the dedupe window's verdict on it."""
    if event is None:
        event = parse_event(record.value, record.key, now_ms=now_ms, limits=policy.limits)
    item = items(event.item_id)
    if item is None:
        raise UnknownItem(f"item {event.item_id[:200]!r} is not in the catalog")
    if window is not None and window.oldest_ms is not None \
            and event.timestamp_ms < window.oldest_ms:
        raise TooOld(f"event time {event.timestamp_ms} is before {window.oldest_ms}, the "
                     "oldest the dedupe window remembers ids of")
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
    if window is not None and window.remembered:
        raise Duplicate(f"event {event.event_id[:200]!r} was accepted within the dedupe window")
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


@dataclass
class Batch:
    """Outcomes in record order, each changed user's newest state with the partition of
    the record that produced it (where its changelog entry belongs), and per partition
    the hashes and event times of the ids accepted, for its dedupe window."""

    outcomes: list[tuple[Record, Accepted | Rejected]] = field(default_factory=list)
    changed: dict[str, tuple[int, UserState]] = field(default_factory=dict)
    seen: dict[int, tuple[Hashes, np.ndarray]] = field(default_factory=dict)


class _Parsed(NamedTuple):
    """Records of a batch parsed once, and the dedupe window's lookup of their ids."""

    events: list[Parsed]
    positions: dict[int, int]  # record position -> position in `hashes` and `found`
    hashes: Hashes
    found: np.ndarray  # bool per hash


def _parse(records: Sequence[Record], *, now_ms: int, policy: Policy,
           seen: Callable[[int], SeenIds] | None) -> _Parsed:
    """Parse every record; look the parsed ids up in their partition's window at once."""
    events = validate(records, now_ms=now_ms, limits=policy.limits)
    positions: dict[int, int] = {}
    for position, event in enumerate(events):
        if not isinstance(event, Exception):
            positions[position] = len(positions)
    hashes: Hashes = np.empty(0, np.uint64)
    found = np.zeros(len(positions), dtype=bool)
    if seen is not None:
        parsed = [events[p] for p in positions]
        hashes = id_hashes([event_key(e.user_id, e.event_id)  # type: ignore[union-attr]
                            for e in parsed])
        by_partition: dict[int, list[int]] = {}
        for position, index in positions.items():
            by_partition.setdefault(records[position].partition, []).append(index)
        for partition, indexes in by_partition.items():
            found[indexes] = seen(partition).contains(hashes[indexes])
    return _Parsed(events, positions, hashes, found)


def admit_batch(
    records: Sequence[Record],
    *,
    items: Callable[[str], events_pb2.Item | None],
    state_of: Callable[[str], UserState],
    now_ms: int,
    policy: Policy,
    seen: Callable[[int], SeenIds] | None = None,
) -> Batch:
    """:func:`admit` for each record; one record's failure never affects another's.
    ``seen(partition)`` is the partition's dedupe window (None: the user states' recent
    ids only)."""
    batch = Batch()
    parsed = _parse(records, now_ms=now_ms, policy=policy, seen=seen)
    # Per partition: the watermark as the batch moves it, and the ids it accepted.
    watermarks: dict[int, int | None] = {}
    accepted_ids: dict[int, set[tuple[str, str]]] = {}
    new_ids: dict[int, tuple[list[int], list[int]]] = {}
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

    for position, record in enumerate(records):
        outcome: Accepted | Rejected
        event = parsed.events[position]
        window: Window | None = None
        try:
            if isinstance(event, Exception):
                raise event
            if seen is not None:
                store = seen(record.partition)
                watermark = watermarks.setdefault(record.partition, store.watermark_ms)
                remembered = bool(parsed.found[parsed.positions[position]]) or \
                    (event.user_id, event.event_id) in accepted_ids.get(record.partition, ())
                window = Window(remembered, store.oldest_ms(watermark))
            outcome = admit(record, items=items, state_of=current, now_ms=now_ms, policy=policy,
                            accepted_at=accepted_at, event=event, window=window)
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
                if window is not None:
                    _remember(record.partition, outcome.event, parsed.positions[position],
                              watermarks, accepted_ids, new_ids)
        batch.outcomes.append((record, outcome))
    for partition, (indexes, times) in new_ids.items():
        batch.seen[partition] = (parsed.hashes[indexes], np.array(times, dtype=np.int64))
    return batch


def _remember(partition: int, event: events_pb2.Event, index: int,
              watermarks: dict[int, int | None], accepted_ids: dict[int, set[tuple[str, str]]],
              new_ids: dict[int, tuple[list[int], list[int]]]) -> None:
    """Note an id the batch accepted: later records of the batch see it and the watermark
    it moves; the batch's result carries it for the window."""
    watermark = watermarks.get(partition)
    if watermark is None or event.timestamp_ms > watermark:
        watermarks[partition] = event.timestamp_ms
    accepted_ids.setdefault(partition, set()).add((event.user_id, event.event_id))
    indexes, times = new_ids.setdefault(partition, ([], []))
    indexes.append(index)
    times.append(event.timestamp_ms)


def remember_ids(accepted: Mapping[int, tuple[Hashes, np.ndarray]],
                 windows: DedupeWindows) -> dict[int, list[Output]]:
    """Add the ids a batch accepted (:attr:`Batch.seen`) to their partitions' dedupe
    windows; the windows' changelog records, per partition of events."""
    return {
        partition: [(windows.topic, partition, key, value)
                    for key, value in windows.add(partition, hashes, times)]
        for partition, (hashes, times) in accepted.items()
    }
