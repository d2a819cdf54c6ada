"""Produce a data set to Kafka: the catalog to ``items``, then events to ``events``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from tqdm import tqdm

from contracts.console import progress_bar
from contracts.relations import record_of
from contracts.security import kafka_kwargs
from contracts.topics import EVENTS, ITEMS, RELATIONS, TopicSpec, ensure_topics, spec
from ingest.dataset import Dataset, rebase_shift_ms
from ingest.messages import event_records, item_records
from ingest.pacing import delays, is_paced, schedule
from ingest.settings import IngestSettings
from protos import events_pb2

log = logging.getLogger(__name__)

CLIENT_ID = "streamrec-ingest-setup"
FIX_COMMAND = "python -m ingest topics fix"
_SLEEP_AHEAD_S = 0.002  # wait only when this far ahead of schedule; records in between batch up


@dataclass(frozen=True)
class ReplayOptions:
    """How fast and in what shape events are replayed."""

    speedup: float = 1.0
    max_gap_s: float = 5.0
    rate: float | None = None
    rebase_now: bool = False
    send_catalog: bool = True
    progress: bool = True


@dataclass(frozen=True)
class ReplaySummary:
    """What a replay sent."""

    items_topic: str
    events_topic: str
    items_sent: int
    events_sent: int
    users: int
    first_timestamp_ms: int | None
    last_timestamp_ms: int | None
    shift_ms: int
    seconds: float

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        rate = self.events_sent / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"items sent:   {self.items_sent} -> {self.items_topic}",
            f"events sent:  {self.events_sent} -> {self.events_topic} ({self.users} users)",
            f"elapsed:      {self.seconds:.1f} s ({rate:,.0f} events/s)",
        ]
        if self.first_timestamp_ms is not None and self.last_timestamp_ms is not None:
            first = pd.Timestamp(self.first_timestamp_ms, unit="ms", tz="UTC")
            last = pd.Timestamp(self.last_timestamp_ms, unit="ms", tz="UTC")
            lines.append(f"event time:   {first.isoformat()} .. {last.isoformat()}")
        if self.shift_ms:
            lines.append(f"rebased by:   {self.shift_ms / 86_400_000:+.2f} days")
        return lines


def topic_specs(settings: IngestSettings, *, items: bool = True, events: bool = True,
                relations: bool = False) -> list[TopicSpec]:
    """The contract topics ingest writes (docs/contracts.md §2)."""
    return [*([spec(ITEMS, settings.topic_items, settings)] if items else []),
            *([spec(EVENTS, settings.topic_events, settings)] if events else []),
            *([spec(RELATIONS, settings.topic_relations, settings)] if relations else [])]


async def prepare_topics(settings: IngestSettings, specs: list[TopicSpec]) -> None:
    """Create the topics about to be written, with their contract settings, and report
    any of another cleanup policy: the broker never auto-creates them."""
    await ensure_topics(settings.kafka_bootstrap, specs, client_id=CLIENT_ID,
                        fix_command=FIX_COMMAND, security=settings)


def make_producer(settings: IngestSettings) -> AIOKafkaProducer:
    """An unstarted producer; batches are built by the replay, up to max_batch_bytes.
    With acks=all (the default) it is idempotent: a retry after a leader change neither
    doubles nor reorders a record of a partition."""
    acks: int | str = settings.acks if settings.acks == "all" else int(settings.acks)
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=settings.client_id,
        acks=acks,
        enable_idempotence=settings.acks == "all",
        max_batch_size=settings.max_batch_bytes,
        request_timeout_ms=settings.request_timeout_ms,
        **kafka_kwargs(settings),
    )


async def publish_catalog(
    producer: AIOKafkaProducer,
    settings: IngestSettings,
    items: pd.DataFrame,
    *,
    progress: bool = True,
) -> int:
    """Send every item to the items topic and wait until all are acknowledged."""
    records = item_records(items, updated_at_ms=int(time.time() * 1000))
    with progress_bar(total=len(items), desc="items", unit="item", enabled=progress) as bar:
        return await _send_all(producer, settings.topic_items, records, bar)


async def publish_relations(
    producer: AIOKafkaProducer,
    settings: IngestSettings,
    relations: Sequence[events_pb2.Relation],
    *,
    progress: bool = True,
) -> int:
    """Send every relation to the relations topic under its edge key, a removal as a
    tombstone, in file order (the last row of an edge is its state), and wait for acks."""
    records = (record_of(relation) for relation in relations)
    with progress_bar(total=len(relations), desc="relations", unit="edge", enabled=progress) as bar:
        return await _send_all(producer, settings.topic_relations, records, bar)


async def publish_events(
    producer: AIOKafkaProducer,
    settings: IngestSettings,
    dataset_name: str,
    interactions: pd.DataFrame,
    options: ReplayOptions,
    shift_ms: int = 0,
) -> int:
    """Send the interactions in their order, paced by `options`, and wait for acks."""
    waits = delays(
        interactions["timestamp_ms"].to_numpy(),
        speedup=options.speedup,
        max_gap_s=options.max_gap_s,
        rate=options.rate,
    )
    marks = schedule(waits) if is_paced(options.speedup, options.rate) else None
    records = event_records(dataset_name, interactions, shift_ms)
    with progress_bar(
        total=len(interactions), desc="events", unit="ev", enabled=options.progress
    ) as bar:
        return await _send_all(
            producer,
            settings.topic_events,
            records,
            bar,
            marks=marks,
        )


async def replay(
    producer: AIOKafkaProducer,
    settings: IngestSettings,
    dataset: Dataset,
    interactions: pd.DataFrame,
    options: ReplayOptions,
) -> ReplaySummary:
    """Catalog first (unless switched off), then the selected interactions."""
    started = time.monotonic()
    items_sent = 0
    if options.send_catalog:
        items_sent = await publish_catalog(
            producer, settings, dataset.items, progress=options.progress
        )
    timestamps = interactions["timestamp_ms"].to_numpy()
    shift_ms = rebase_shift_ms(timestamps, int(time.time() * 1000)) if options.rebase_now else 0
    events_sent = await publish_events(
        producer, settings, dataset.name, interactions, options, shift_ms
    )
    has_events = len(timestamps) > 0
    return ReplaySummary(
        items_topic=settings.topic_items,
        events_topic=settings.topic_events,
        items_sent=items_sent,
        events_sent=events_sent,
        users=int(interactions["user_id"].nunique()),
        first_timestamp_ms=int(timestamps[0]) + shift_ms if has_events else None,
        last_timestamp_ms=int(timestamps[-1]) + shift_ms if has_events else None,
        shift_ms=shift_ms,
        seconds=time.monotonic() - started,
    )


class _Batcher:
    """Open record batches of one topic, one per partition, sent when full or flushed.

    Partitions come from the client's default partitioner (Java-compatible murmur2 of
    the key), memoised per key since a replay repeats the same user ids. Each partition
    has at most one batch queued in the producer, which keeps per-key order and bounds
    memory.
    """

    def __init__(self, producer: AIOKafkaProducer, topic: str, partitions: list[int]) -> None:
        self._producer = producer
        self._topic = topic
        self._partitions = partitions
        self._partitioner = DefaultPartitioner()
        self._partition_of: dict[bytes, int] = {}
        self._open: dict[int, BatchBuilder] = {}
        self._in_flight: list[tuple[asyncio.Future[object], int]] = []
        self.acknowledged = 0

    async def add(self, key: bytes, value: bytes | None) -> None:
        """Append one record (a None value: a tombstone); a full batch goes to the producer first."""
        partition = self._partition_of.get(key)
        if partition is None:
            partition = self._partitioner(key, self._partitions, self._partitions)
            self._partition_of[key] = partition
        batch = self._open.get(partition)
        if batch is None:
            batch = self._open[partition] = self._producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:
            await self._ship(partition)
            batch = self._open[partition] = self._producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a record of {len(value or b'')} bytes exceeds max_batch_bytes")

    async def flush(self) -> None:
        """Hand every open batch to the producer."""
        for partition in list(self._open):
            await self._ship(partition)

    async def wait(self) -> int:
        """Flush, wait for every ack, and return how many records were acknowledged."""
        await self.flush()
        for future, records in self._in_flight:
            await future
            self.acknowledged += records
        self._in_flight.clear()
        return self.acknowledged

    async def _ship(self, partition: int) -> None:
        batch = self._open.pop(partition)
        if batch.record_count() == 0:
            return
        batch.close()
        future = await self._producer.send_batch(batch, self._topic, partition=partition)
        self._in_flight.append((future, batch.record_count()))
        self._settle_done()

    def _settle_done(self) -> None:
        """Count finished batches and raise the first failure among them."""
        still: list[tuple[asyncio.Future[object], int]] = []
        for future, records in self._in_flight:
            if future.done():
                future.result()
                self.acknowledged += records
            else:
                still.append((future, records))
        self._in_flight = still


async def _send_all(
    producer: AIOKafkaProducer,
    topic: str,
    records: Iterable[tuple[str | bytes, bytes | None]],
    bar: tqdm,
    *,
    marks: np.ndarray | None = None,
) -> int:
    """Send records in order and wait for their acks; with `marks`, hold each record
    until its second after the start, handing over what is batched before waiting."""
    batcher = _Batcher(producer, topic, sorted(await producer.partitions_for(topic)))
    loop = asyncio.get_running_loop()
    started = loop.time()
    for index, (key, value) in enumerate(records):
        if marks is not None:
            ahead = started + float(marks[index]) - loop.time()
            if ahead > _SLEEP_AHEAD_S:
                await batcher.flush()
                await asyncio.sleep(ahead)
        await batcher.add(key.encode("utf-8") if isinstance(key, str) else key, value)
        bar.update(1)
    return await batcher.wait()
