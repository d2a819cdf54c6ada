"""One partition's life on the events path: assignment, fencing, restoring its changelogs,
seeking, its batches and their transaction, commits, revocation.

``events`` is read in large batches by one member of the events consumer group; each
batch's records not handled before go to :class:`streams.events.handler.EventsHandler`,
whose outputs go into their partitions' transactions (:mod:`streams.events.transactions`),
committed with the partitions' next offsets every ``commit_interval_s``.

Faust hands an agent one record at a time (fetch hand-over, stream, buffer, ack per
record), which caps a worker at a few thousand events a second on two cores; here a
``getmany`` returns up to ``event_batch_size`` records at once and the outputs leave as
one record batch per output partition. The consumer group is ``{app_id}-events``:
Faust's own group (the items agent) uses another assignor, and one group cannot mix two.

Per assigned partition, in this order: its transactional producer starts (fencing a
previous owner and aborting what it left open), its user states and its dedupe window
are restored from their committed changelogs (:mod:`streams.events.userstore`,
:mod:`streams.events.seenstore`), its users waiting for item vectors are noted, and the
consumer is sought to the committed offset, read only after the fence so that no commit
of the previous owner can still be on its way. A revoked partition's work is committed
before the group moves on, then its states are dropped.

Earlier versions read ``events`` in Faust's group (``app_id``) and committed there; a
partition with no offset in the events group starts from that group's offset, so an
upgrade neither reads the event log again nor skips any of it.
"""

from __future__ import annotations

import logging
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from mode import Service

from contracts.security import KafkaSecurity, kafka_kwargs
from streams.events.handler import EventsHandler
from streams.events.offsets import PartitionOffsets
from streams.events.seenstore import SeenStore
from streams.events.transactions import Transactions
from streams.events.userstore import UserStore
from streams.live import LiveModel
from streams.metrics import StreamsMetrics

log = logging.getLogger(__name__)

MAX_PARTITION_FETCH_BYTES = 4 << 20


def consumer_options(*, bootstrap_servers: list[str], group: str, fetch_max_wait_ms: int,
                     session_timeout_s: float, security: KafkaSecurity | None,
                     ) -> dict[str, object]:
    """``AIOKafkaConsumer`` arguments of a reader whose offsets its transactions commit."""
    return dict(
        bootstrap_servers=bootstrap_servers,
        group_id=group,
        client_id=f"{group}-consumer",
        enable_auto_commit=False,  # offsets are committed in the transactions
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        fetch_max_wait_ms=fetch_max_wait_ms,
        max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
        session_timeout_ms=int(session_timeout_s * 1000),
        heartbeat_interval_ms=int(session_timeout_s * 1000 / 4),
        **kafka_kwargs(security),
    )


async def seek_committed(consumer: AIOKafkaConsumer, offsets: PartitionOffsets, topic: str,
                         partitions: set[int],
                         ) -> tuple[list[TopicPartition], dict[int, int]]:
    """Seek each of the newly assigned `partitions` to its committed offset (after their
    producers fenced the previous owner); returns those without a committed offset, and
    the others' offsets."""
    uncommitted: list[TopicPartition] = []
    starts: dict[int, int] = {}
    for partition in sorted(partitions):
        tp = TopicPartition(topic, partition)
        committed = await consumer.committed(tp)
        if committed is not None:
            starts[partition] = committed
            consumer.seek(tp, committed)
            # Records fetched from a position the consumer found on its own before this
            # seek may still come out of getmany: drop those below.
            offsets.start_at(partition, committed)
        else:
            uncommitted.append(tp)
    return uncommitted, starts


class Assignable(Protocol):
    """A reader told of the partitions of its topic it gains and loses."""

    async def assigned(self, partitions: set[int]) -> None: ...

    async def revoked(self, partitions: set[int]) -> None: ...


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands a rebalance's partition numbers to the reader."""

    def __init__(self, consumer: Assignable) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._consumer.revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._consumer.assigned({tp.partition for tp in assigned})


class Subscribed:
    """The consumer of one topic's partitions in a group, made on start (in the event loop)
    with ``_consumer_options`` and subscribed with :class:`Rebalance`; the reader (a mode
    Service) names its ``topic``."""

    topic: str
    _consumer_options: dict[str, object]
    _consumer: AIOKafkaConsumer | None = None

    @property
    def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError(f"the {self.topic} consumer has not started")
        return self._consumer

    def assignment(self) -> set[int]:
        """Partitions of the topic assigned to this worker now."""
        if self._consumer is None:
            return set()
        return {tp.partition for tp in self._consumer.assignment() if tp.topic == self.topic}

    async def on_start(self) -> None:
        self._consumer = AIOKafkaConsumer(**self._consumer_options)
        self._consumer.subscribe([self.topic], listener=Rebalance(self))  # type: ignore[arg-type]
        await self._consumer.start()


class EventsConsumer(Subscribed, Service):
    """Consumes ``topic`` in the ``group`` and feeds the handler batch by batch."""

    def __init__(
        self,
        *,
        handler: EventsHandler,
        transactions: Transactions,
        users: UserStore,
        seen: SeenStore,
        live: LiveModel,
        metrics: StreamsMetrics,
        bootstrap_servers: list[str],
        topic: str,
        group: str,
        legacy_group: str | None,
        batch_size: int,
        batch_wait_ms: int,
        fetch_max_wait_ms: int,
        session_timeout_s: float,
        security: KafkaSecurity | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.handler = handler
        self._transactions = transactions
        self._users = users
        self._seen = seen
        self._live = live
        self._metrics = metrics
        self.topic = topic
        self.group = group
        self._legacy_group = legacy_group
        self._bootstrap_servers = bootstrap_servers
        self._security = security
        self._batch_size = batch_size
        self._batch_wait_ms = batch_wait_ms
        self.add_dependency(transactions)  # started before, stopped after this service
        self._consumer_options = consumer_options(
            bootstrap_servers=bootstrap_servers, group=group,
            fetch_max_wait_ms=fetch_max_wait_ms, session_timeout_s=session_timeout_s,
            security=security,
        )
        self._consumer: AIOKafkaConsumer | None = None  # made on start, in the event loop

    async def on_stop(self) -> None:
        # Between two batches (the loop sees should_stop under the lock): commit what was
        # handled, then leave the group; the transactions stop after this.
        async with self._live.lock:
            await self._transactions.finish()
        if self._consumer is not None:
            await self._consumer.stop()

    async def assigned(self, partitions: set[int]) -> None:
        async with self._live.lock:
            await self._transactions.assigned(partitions)
            await self._users.restore(partitions)
            await self._seen.restore(partitions)
            self.handler.note_waiting(partitions)
            uncommitted, starts = await seek_committed(
                self.consumer, self._transactions.offsets, self.topic, partitions)
            legacy = await self._legacy_offsets(uncommitted)
            if legacy:
                # Committed in this group too: the consumer's own look-up of committed
                # offsets, which may come after the seek, must not reset it to the start.
                await self.consumer.commit(legacy)
            for tp, offset in legacy.items():
                log.info("%s[%s] starts at offset %s, committed by group %s", tp.topic,
                         tp.partition, offset, self._legacy_group)
                self.consumer.seek(tp, offset)
                self._transactions.offsets.start_at(tp.partition, offset)
            # Any other: no commit yet, auto_offset_reset (earliest) decides.
            # Deletions a previous owner applied to Redis below the committed offsets are
            # committed: their receipts go.
            await self.handler.committed(starts, always=True)
        log.info("events partitions %s assigned; %s users held", sorted(partitions),
                 len(self._users))

    async def _legacy_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Offsets the legacy group committed for `partitions` (those it has)."""
        if not partitions or not self._legacy_group:
            return {}
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap_servers,
                                    client_id=f"{self.group}-admin",
                                    **kafka_kwargs(self._security))
        await admin.start()
        try:
            found = await admin.list_consumer_group_offsets(self._legacy_group,
                                                            partitions=partitions)
        finally:
            await admin.close()
        return {tp: meta.offset for tp, meta in found.items() if meta.offset >= 0}

    async def revoked(self, partitions: set[int]) -> None:
        async with self._live.lock:
            await self._transactions.revoked(partitions)
            self._users.drop(partitions)
            self._seen.drop(partitions)
            self.handler.waiting.drop(partitions)
            self.handler.pending.forget_partitions(partitions)
        log.info("events partitions %s revoked", sorted(partitions))

    @Service.task
    async def _consume(self) -> None:
        consumer = self.consumer
        transactions = self._transactions
        while not self.should_stop:
            try:
                batches = await consumer.getmany(timeout_ms=self._batch_wait_ms,
                                                 max_records=self._batch_size)
            except KafkaError as error:
                log.error("reading %s failed (%r); stopping the worker", self.topic, error)
                await self.crash(error)
                return
            if not batches:
                continue
            async with self._live.lock:  # a rebalance or a model switch waits for the batch
                if self.should_stop:
                    return  # stopping: the last commit (on_stop) must not take half a batch
                # Records fetched before a rebalance may be of a partition gone meanwhile.
                records = [record for tp, part in batches.items()
                           if transactions.owns(tp.partition) for record in part]
                if records:
                    await self._handle(records)
            self._observe_lag(batches)

    async def _handle(self, records: list[ConsumerRecord]) -> None:
        """One batch of owned partitions' records into their transactions (the caller
        holds ``live.lock``)."""
        transactions = self._transactions
        self._metrics.events_in.inc(len(records))
        self._metrics.batch_size.observe(len(records))
        # Records at or past the partition's handled offset only (fetched before a seek,
        # or again after a rebalance kept the partition here).
        handled = transactions.offsets.handled
        fresh = [r for r in records if not handled(r.partition, r.offset)]
        if not fresh:
            return
        outputs = await self.handler.handle(fresh)
        await transactions.hand_over(outputs, ((r.partition, r.offset) for r in fresh))

    def _observe_lag(self, batches: dict[TopicPartition, list]) -> None:  # type: ignore[type-arg]
        for tp, records in batches.items():
            end = self.consumer.highwater(tp)
            if end is not None and records:
                self._metrics.lag.labels(str(tp.partition)).set(max(end - records[-1].offset - 1, 0))
