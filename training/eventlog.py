"""Read the event log (``events.enriched``) and the catalog (``items``) by offsets.

Both reads snapshot the end offset of every partition first and read up to it, with
manual assignment and no consumer group, so a run reads a fixed, reproducible window
``{partition: [start, end)}`` however much is produced meanwhile. The events of deleted
users from before their deletion (``contracts.deletions``) are left out as they are read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from contracts.console import progress_bar
from contracts.deletions import Deletions
from contracts.records import decode_record
from protos import events_pb2
from training.errors import LogReadError

log = logging.getLogger(__name__)

Ranges = dict[int, tuple[int, int]]
_POLL_MS = 200
_POLL_RECORDS = 10_000


@dataclass
class EventLog:
    """Events of the log in read order (per partition, by offset), as columns."""

    topic: str
    ranges: Ranges
    user_ids: list[str] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    timestamps_ms: list[int] = field(default_factory=list)
    event_types: list[int] = field(default_factory=list)
    items: dict[str, events_pb2.Item] = field(default_factory=dict)
    undecodable: int = 0
    deleted: int = 0  # events of deleted users left out

    def __len__(self) -> int:
        return len(self.user_ids)

    def add(self, enriched: events_pb2.EnrichedEvent) -> None:
        """Append one event; keep the newest copy of its item."""
        event = enriched.event
        self.user_ids.append(event.user_id)
        self.item_ids.append(event.item_id)
        self.weights.append(float(enriched.weight))
        self.timestamps_ms.append(int(event.timestamp_ms))
        self.event_types.append(int(event.type))
        if enriched.HasField("item") and enriched.item.item_id:
            self.items[enriched.item.item_id] = enriched.item


def plan_ranges(
    beginning: Mapping[int, int],
    end: Mapping[int, int],
    start: Mapping[int, int],
    max_events: int,
) -> Ranges:
    """The offset range ``[start, end)`` to read per partition.

    A partition starts at `start` (clamped into ``[beginning, end]``) or its beginning.
    When more than `max_events` remain, each partition keeps its newest events, in
    proportion to its share (largest remainders get the leftover, ties to the lower
    partition), so exactly `max_events` are read.
    """
    unknown = sorted(set(start) - set(end))
    if unknown:
        raise LogReadError(f"start offsets name partitions {unknown} the topic does not have")
    if max_events < 1:
        raise LogReadError(f"max_events must be >= 1, got {max_events}")
    ranges: Ranges = {}
    for partition in sorted(end):
        first = start.get(partition, beginning[partition])
        first = min(max(first, beginning[partition]), end[partition])
        ranges[partition] = (first, end[partition])
    total = sum(stop - first for first, stop in ranges.values())
    if total <= max_events:
        return ranges
    sizes = {p: stop - first for p, (first, stop) in ranges.items()}
    quotas = {p: size * max_events // total for p, size in sizes.items()}
    leftover = max_events - sum(quotas.values())
    by_remainder = sorted(sizes, key=lambda p: (-(sizes[p] * max_events % total), p))
    for partition in by_remainder[:leftover]:
        quotas[partition] += 1
    return {p: (stop - quotas[p], stop) for p, (_, stop) in ranges.items()}


def count(ranges: Mapping[int, tuple[int, int]]) -> int:
    """Offsets covered by the ranges (an upper bound on records: compaction leaves gaps)."""
    return sum(stop - first for first, stop in ranges.values())


def read_event_log(
    consumer: KafkaConsumer,
    topic: str,
    *,
    start_offsets: Mapping[int, int],
    max_events: int,
    timeout_s: float,
    progress: bool = True,
    deletions: Deletions | None = None,
) -> EventLog:
    """Read `topic` (``EnrichedEvent`` values) over the planned ranges, without the
    events `deletions` removes."""
    beginning, end = _offsets(consumer, topic)
    ranges = plan_ranges(beginning, end, start_offsets, max_events)
    events = EventLog(topic=topic, ranges=ranges)

    def handle(record: ConsumerRecord) -> None:
        try:
            enriched = events_pb2.EnrichedEvent.FromString(record.value or b"")
        except DecodeError:
            events.undecodable += 1
            return
        if deletions is not None and deletions.removes(enriched.event.user_id,
                                                       enriched.event.timestamp_ms):
            events.deleted += 1
            return
        events.add(enriched)

    read_ranges(consumer, topic, ranges, handle, timeout_s=timeout_s, desc="log", progress=progress)
    if events.undecodable:
        log.warning("%s: skipped %s undecodable records", topic, events.undecodable)
    if events.deleted:
        log.info("%s: left out %s events of deleted users", topic, events.deleted)
    return events


def read_catalog(
    consumer: KafkaConsumer, topic: str, *, timeout_s: float, progress: bool = True
) -> dict[str, events_pb2.Item]:
    """The whole compacted catalog: the newest `Item` per key; a tombstone deletes."""
    beginning, end = _offsets(consumer, topic)
    ranges = {p: (beginning[p], end[p]) for p in sorted(end)}
    catalog: dict[str, events_pb2.Item] = {}
    skipped = 0

    def handle(record: ConsumerRecord) -> None:
        nonlocal skipped
        key = record.key.decode("utf-8") if record.key else ""
        if record.value is None:
            catalog.pop(key, None)
            return
        try:
            item = decode_record(record.value, events_pb2.Item)
        except DecodeError:
            skipped += 1
            return
        catalog[item.item_id or key] = item

    read_ranges(
        consumer, topic, ranges, handle, timeout_s=timeout_s, desc="catalog", progress=progress
    )
    if skipped:
        log.warning("%s: skipped %s undecodable items", topic, skipped)
    return catalog


def read_ranges(
    consumer: KafkaConsumer,
    topic: str,
    ranges: Mapping[int, tuple[int, int]],
    handle: Callable[[ConsumerRecord], None],
    *,
    timeout_s: float,
    desc: str,
    progress: bool,
) -> None:
    """Call `handle` for every record in the ranges, each partition in offset order."""
    open_ranges = {p: r for p, r in ranges.items() if r[1] > r[0]}
    consumer.assign([TopicPartition(topic, p) for p in sorted(open_ranges)])
    for partition, (first, _) in open_ranges.items():
        consumer.seek(TopicPartition(topic, partition), first)
    remaining = set(open_ranges)
    last_progress = time.monotonic()
    with progress_bar(total=count(open_ranges), desc=desc, unit="rec", enabled=progress) as bar:
        while remaining:
            batches = consumer.poll(timeout_ms=_POLL_MS, max_records=_POLL_RECORDS)
            if batches:
                last_progress = time.monotonic()
            for tp, records in batches.items():
                stop = open_ranges[tp.partition][1]
                inside = [record for record in records if record.offset < stop]
                for record in inside:
                    handle(record)
                bar.update(len(inside))
            for partition in list(remaining):
                tp = TopicPartition(topic, partition)
                if consumer.position(tp) >= open_ranges[partition][1]:
                    remaining.discard(partition)
                    consumer.pause(tp)
            if remaining and time.monotonic() - last_progress > timeout_s:
                positions = {
                    p: consumer.position(TopicPartition(topic, p)) for p in sorted(remaining)
                }
                raise LogReadError(
                    f"{topic}: no progress for {timeout_s:.0f} s; positions {positions}, "
                    f"ranges {dict(open_ranges)}"
                )
    consumer.unsubscribe()


def _offsets(consumer: KafkaConsumer, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """``(beginning, end)`` offsets per partition of `topic`, as of now."""
    found = consumer.partitions_for_topic(topic)
    if not found:
        raise LogReadError(f"topic {topic!r} does not exist on the broker")
    partitions = [TopicPartition(topic, partition) for partition in sorted(found)]
    beginning = consumer.beginning_offsets(partitions)
    end = consumer.end_offsets(partitions)
    return (
        {tp.partition: offset for tp, offset in beginning.items()},
        {tp.partition: offset for tp, offset in end.items()},
    )
