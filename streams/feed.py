"""Keeps a :class:`Catalog` equal to the compacted ``items`` and ``item-vectors`` topics.

Every worker reads every partition of both topics (no consumer group), because any
worker's users may touch any item. On start it reads both topics to their end offsets
before the worker's agents start, so no event is judged against a half-loaded catalog;
then it follows new records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from google.protobuf.message import DecodeError
from mode import Service

from contracts.catchup import read_to_end
from contracts.security import KafkaSecurity, kafka_kwargs
from protos import events_pb2
from streams.catalog import Catalog
from streams.errors import RejectedInput, TopicSetupError
from streams.validation import parse_item

log = logging.getLogger(__name__)

ASSIGNMENT_TIMEOUT_S = 30.0


async def full_assignment(
    consumer: AIOKafkaConsumer, topics: tuple[str, ...]
) -> list[TopicPartition]:
    """Every partition of `topics`, once metadata and assignment have caught up."""
    deadline = time.monotonic() + ASSIGNMENT_TIMEOUT_S
    while True:
        known = {topic: consumer.partitions_for_topic(topic) for topic in topics}
        wanted = {TopicPartition(t, p) for t, numbers in known.items() for p in numbers or ()}
        if all(known.values()) and wanted <= consumer.assignment():
            return sorted(wanted)
        if time.monotonic() > deadline:
            missing = [topic for topic, numbers in known.items() if not numbers]
            raise TopicSetupError(f"no partitions assigned for topics {missing or topics}")
        await asyncio.sleep(0.05)


class CatalogFeed(Service):
    """A group-less consumer of the catalog topics feeding one :class:`Catalog`."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        bootstrap_servers: list[str],
        topic_items: str,
        topic_item_vectors: str,
        fetch_max_wait_ms: int,
        max_item_bytes: int,
        security: KafkaSecurity | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.catalog = catalog
        self._bootstrap_servers = bootstrap_servers
        self._security = security
        self._topic_items = topic_items
        self._topic_item_vectors = topic_item_vectors
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._max_item_bytes = max_item_bytes
        self._consumer: AIOKafkaConsumer | None = None

    async def on_start(self) -> None:
        topics = (self._topic_items, self._topic_item_vectors)
        # Subscribed without a group, aiokafka assigns every partition of both topics and
        # starts each at its beginning (no committed offsets).
        consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self._bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            client_id="streamrec-streams-catalog",
            **kafka_kwargs(self._security),
        )
        await consumer.start()
        self._consumer = consumer
        await self._catch_up(consumer, await full_assignment(consumer, topics))

    async def _catch_up(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
        started = time.monotonic()
        await read_to_end(consumer, partitions, self._apply)
        log.info(
            "catalog loaded: %s items, %s vectors of version %s in %.1f s",
            len(self.catalog), self.catalog.vector_count(), self.catalog.model_version,
            time.monotonic() - started,
        )

    @Service.task
    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None  # started in on_start
        while not self.should_stop:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                self._apply(records)

    async def on_shutdown(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    def _apply(self, records: Iterable[ConsumerRecord]) -> None:
        for record in records:
            if record.topic == self._topic_items:
                self._apply_item(record)
            else:
                self._apply_vector(record)

    def _apply_item(self, record: ConsumerRecord) -> None:
        if record.value is None:
            if record.key is not None:
                self.catalog.remove_item(record.key.decode(errors="replace"))
            return
        try:
            self.catalog.put_item(parse_item(record.value, max_bytes=self._max_item_bytes))
        except RejectedInput as error:  # the items agent dead-letters it
            log.debug("catalog skips %s[%s]@%s: %s", record.topic, record.partition,
                      record.offset, error)

    def _apply_vector(self, record: ConsumerRecord) -> None:
        if record.value is None:
            return
        try:
            self.catalog.put_vector(events_pb2.ItemVector.FromString(record.value))
        except DecodeError:
            log.warning("undecodable item vector at %s[%s]@%s", record.topic,
                        record.partition, record.offset)
