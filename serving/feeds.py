"""Following the compacted catalog topics: ``item-vectors`` into the index, ``items`` into
the catalog.

A :class:`TopicFeed` reads every partition of one topic from the beginning without a
consumer group (nothing is committed: every replica rebuilds its state from the log),
reports when it has caught up with the end offsets it saw at start, and then follows
new records. A missing topic is looked for again until it appears; a Kafka error
restarts the feed from the beginning (updates are idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from google.protobuf.message import DecodeError

from contracts.catchup import read_to_end, topic_partitions
from contracts.records import decode_record
from contracts.security import KafkaSecurity, kafka_kwargs
from protos import events_pb2
from serving.catalog import Catalog
from serving.models import Models

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[ConsumerRecord]], None]


class VectorUpdates:
    """Applies ``ItemVector`` records to the loaded model of the record's version.

    Vectors of a version serving does not hold are ignored (no mixed versions); a
    tombstone (no value) removes the item from every loaded version.
    """

    def __init__(self, models: Models) -> None:
        self._models = models
        self.ignored = 0  # records of a version not loaded, mis-sized or undecodable

    def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        # In log order: a tombstone drops the item's earlier vectors of this batch and
        # removes it from every index; a later vector (any version) adds it back.
        latest: dict[tuple[str, str], np.ndarray] = {}
        removed: set[str] = set()
        for record in records:
            if record.value is None:
                if record.key:
                    item_id = record.key.decode(errors="replace")
                    removed.add(item_id)
                    latest = {key: v for key, v in latest.items() if key[1] != item_id}
                continue
            decoded = self._decode(record)
            if decoded is not None:
                latest[(decoded[0], decoded[1])] = decoded[2]
        if removed:
            for model in self._models.loaded():
                model.index.remove(removed)
        by_version: dict[str, dict[str, np.ndarray]] = {}
        for (version, item_id), vector in latest.items():
            by_version.setdefault(version, {})[item_id] = vector
        for version, updated in by_version.items():
            target = self._models.get(version)
            if target is not None:  # unloaded since decoding: nothing to update
                target.index.upsert(list(updated), np.stack(list(updated.values())))

    def _decode(self, record: ConsumerRecord) -> tuple[str, str, np.ndarray] | None:
        try:
            message = events_pb2.ItemVector.FromString(record.value)
        except DecodeError:
            log.warning("undecodable item vector at %s[%s]@%s", record.topic, record.partition,
                        record.offset)
            self.ignored += 1
            return None
        model = self._models.get(message.model_version)
        if model is None:
            self.ignored += 1
            return None
        item_id = message.item_id or (record.key or b"").decode(errors="replace")
        vector = np.asarray(message.vector, dtype=np.float32)
        usable = vector.shape == (model.index.dim,) and np.isfinite(vector).all() and vector.any()
        if not item_id or not usable:
            log.warning("unusable item vector for %r at %s[%s]@%s (dimension %s)", item_id,
                        record.topic, record.partition, record.offset, vector.shape[0])
            self.ignored += 1
            return None
        return message.model_version, item_id, vector


class CatalogUpdates:
    """Applies ``Item`` records to a catalog; a tombstone removes the item."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        for record in records:
            if record.value is None:
                if record.key:
                    self._catalog.remove(record.key.decode(errors="replace"))
                continue
            try:
                item = decode_record(record.value, events_pb2.Item)
            except DecodeError:
                log.warning("undecodable item at %s[%s]@%s", record.topic, record.partition,
                            record.offset)
                continue
            if item.item_id:
                self._catalog.put(item)


class TopicFeed:
    """Reads one topic from its beginning into `handle`, for as long as :meth:`run` runs."""

    def __init__(
        self,
        topic: str,
        handle: Handler,
        *,
        bootstrap_servers: list[str],
        client_id: str,
        fetch_max_wait_ms: int,
        retry_s: float,
        poll_s: float,
        security: KafkaSecurity | None = None,
    ) -> None:
        self.topic = topic
        self._handle = handle
        self._bootstrap_servers = bootstrap_servers
        self._security = security
        self._client_id = client_id
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._retry_s = retry_s
        self._poll_s = poll_s
        self.loaded = asyncio.Event()  # set once caught up, or when the topic is missing at start

    async def run(self) -> None:
        """Follow the topic until cancelled, starting over after any failure."""
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception:  # a feed must outlive broker trouble; the log says what happened
                log.exception("feed of %r failed; restarting in %.1f s", self.topic, self._retry_s)
                await asyncio.sleep(self._retry_s)

    async def _follow(self) -> None:
        partitions = await self._await_partitions()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap_servers,
            client_id=self._client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            **kafka_kwargs(self._security),
        )
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            await self._catch_up(consumer, partitions)
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    self._handle(records)
        finally:
            await consumer.stop()

    async def _await_partitions(self) -> list[TopicPartition]:
        """The topic's partitions, waiting for the topic to exist (never creating it)."""
        while True:
            partitions = await topic_partitions(self._bootstrap_servers, self._client_id, self.topic,
                                                self._security)
            if partitions:
                return partitions
            if not self.loaded.is_set():
                log.warning("topic %r does not exist yet; serving without it until it does",
                            self.topic)
                self.loaded.set()
            await asyncio.sleep(self._poll_s)

    async def _catch_up(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
        """Apply everything up to the end offsets seen now, then mark the feed loaded."""
        started = time.monotonic()
        count = 0

        def handle(records: Sequence[ConsumerRecord]) -> None:
            nonlocal count
            self._handle(records)
            count += len(records)

        await read_to_end(consumer, partitions, handle)
        log.info("topic %r loaded: %s records in %.2f s", self.topic, count,
                 time.monotonic() - started)
        self.loaded.set()
