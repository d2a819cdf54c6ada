"""Exactly-once output of the events path: one Kafka transaction per partition of
``events``.

Each partition of the events topic has its own transactional producer, id
``{app_id}-{events topic}-{partition}``. The enriched events, dead letters and changed
user states (the users changelog, :mod:`streams.events.userstore`) made from a partition's
records go into that producer's open transaction; a commit adds the partition's next
offset to the transaction (``send_offsets_to_transaction``, the events consumer group's
committed offset) and commits all of it, so a reader with ``isolation.level=read_committed``
sees a record's outputs exactly when the worker will not read the record again. A crash
leaves the open transaction uncommitted: the next owner of the partition starts a
producer with the same id, which aborts it and fences off the old one, restores the
partition's user states from the committed changelog and reads the partition again from
the committed offset.

Faust's own ``processing_guarantee="exactly_once"`` is not used: it picks a record's
transaction by the partition of the *output*, so a dead letter keyed by another user (or
by no key) lands in another partition's transaction or in none; it logs and ignores
commit errors; its table changelogs are written outside the transactions; and its
changelog recovery steps over transaction markers only after several 5 s timeouts.

One transaction spans ``commit_interval_s`` of batches, not one batch: a commit costs a
few broker round trips, which per batch would cap throughput. Records go to the producer
as whole record batches per output partition (:mod:`streams.events.recordbatches`), not
one ``send`` per record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced
from mode import Service

from contracts.security import KafkaSecurity, kafka_kwargs
from streams.events.offsets import PartitionOffsets
from streams.events.recordbatches import MAX_BATCH_BYTES, send_batches
from streams.records import Output

log = logging.getLogger(__name__)


class Transactions(Service):
    """Transactional producers of the assigned partitions of one source topic.

    Callers hold :attr:`lock` from the first :meth:`send` of a batch to its last
    :meth:`processed`, so a commit never takes half a batch. Any Kafka error other than
    being fenced crashes the worker: the state of an open transaction is then unknown,
    and a restart reads the partition again from its committed offset.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: list[str],
        group_id: str,
        transactional_prefix: str,
        topic: str,
        commit_interval_s: float,
        transaction_timeout_ms: int,
        owns: Callable[[int], bool],
        security: KafkaSecurity | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._bootstrap_servers = bootstrap_servers
        self._security = security
        self.group_id = group_id
        self._transactional_prefix = transactional_prefix
        self.topic = topic
        self._commit_interval_s = commit_interval_s
        self._transaction_timeout_ms = transaction_timeout_ms
        self._owns = owns
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._fenced_off: set[int] = set()
        self._open: set[int] = set()
        self.offsets = PartitionOffsets()  # handled and next offsets of the partitions
        self.lock = asyncio.Lock()
        self._starting = asyncio.Lock()  # two producers of one id would fence each other
        self.commits = 0
        # Called after each commit with the partitions committed and their next offsets.
        self.after_commit: Callable[[Mapping[int, int]], Awaitable[None]] | None = None

    def transactional_id(self, partition: int) -> str:
        return f"{self._transactional_prefix}-{self.topic}-{partition}"

    async def on_stop(self) -> None:
        # Uncommitted work is left to the next owner, which reads it again.
        for partition in list(self._producers):
            await self._close(partition)

    async def assigned(self, partitions: Iterable[int]) -> None:
        """Start the producers of newly assigned partitions: this aborts what a previous
        owner left open, so readers of the outputs are not held up by it."""
        self._fenced_off.difference_update(partitions)
        for partition in sorted(partitions):
            await self._producer(partition)

    async def revoked(self, partitions: Iterable[int]) -> None:
        """Commit what was processed, then let go of the revoked partitions."""
        async with self.lock:
            await self.commit()
            for partition in sorted(partitions):
                await self._close(partition)

    async def finish(self) -> None:
        """Commit what was processed before the worker stops."""
        async with self.lock:
            try:
                await self.commit()
            except KafkaError as error:
                log.warning("last commit failed (%r); the next owner reads those records "
                            "again", error)

    async def flush(self) -> None:
        """Wait until every record sent so far is in the log (committed or not)."""
        for producer in list(self._producers.values()):
            try:
                await producer.flush()
            except KafkaError as error:
                await self._fail(error)

    async def send_many(self, partition: int, outputs: Sequence[Output]) -> None:
        """Add records to the open transaction of `partition` (of the source topic), one
        record batch per output partition; records of a partition this worker no longer
        owns are left to the new owner."""
        producer = await self._producer(partition)
        if producer is None or not outputs:
            return
        try:
            await self._begin(partition, producer)
            await send_batches(producer, outputs)
        except ProducerFenced:
            await self._fenced(partition)
        except KafkaError as error:
            await self._fail(error)

    async def hand_over(self, outputs: Mapping[int, Sequence[Output]],
                        records: Iterable[tuple[int, int]]) -> None:
        """A batch's outputs into their partitions' open transactions, then its records
        (``(partition, offset)``) processed, all under :attr:`lock`: a commit takes a batch
        whole or not at all. Commits are the periodic task's: the next batch reads, judges
        and writes Redis while one is on its way, and waits for it only here."""
        newest: dict[int, int] = {}
        for partition, offset in records:
            newest[partition] = max(newest.get(partition, -1), offset)
        async with self.lock:
            for partition, batch in outputs.items():
                await self.send_many(partition, batch)
            for partition, offset in newest.items():
                self.processed(partition, offset)

    def owns(self, partition: int) -> bool:
        """Whether this worker has the partition's producer (it was assigned, not fenced)."""
        return partition in self._producers

    def processed(self, partition: int, offset: int) -> None:
        """The record at `offset` of `partition` has its outputs in the open transaction
        (ignored once the partition's producer is gone)."""
        if partition in self._producers:
            self.offsets.processed(partition, offset)

    def due(self) -> bool:
        return self.offsets.pending() and (
            time.monotonic() - self._last_commit >= self._commit_interval_s
        )

    async def commit(self) -> None:
        """Commit every open transaction with its partition's next offset; hold :attr:`lock`."""
        self._last_commit = time.monotonic()
        pending = self.offsets.take()
        if not pending:
            return
        done = await asyncio.gather(*(self._commit_one(p, offset) for p, offset in pending.items()))
        self.commits += 1
        if self.after_commit is not None:
            await self.after_commit({p: offset for (p, offset), ok in zip(pending.items(), done,
                                                                          strict=True) if ok})

    async def _begin(self, partition: int, producer: AIOKafkaProducer) -> None:
        """Open the partition's transaction unless it is open."""
        if partition not in self._open:
            await producer.begin_transaction()
            self._open.add(partition)

    async def _commit_one(self, partition: int, next_offset: int) -> bool:
        """Whether the partition's transaction committed with `next_offset`."""
        producer = self._producers.get(partition)
        if producer is None:
            return False  # fenced meanwhile: the new owner reads these records again
        offsets = {TopicPartition(self.topic, partition): next_offset}
        try:
            await self._begin(partition, producer)
            await producer.send_offsets_to_transaction(offsets, self.group_id)
            await producer.commit_transaction()
            self._open.discard(partition)
            return True
        except ProducerFenced:
            await self._fenced(partition)
        except KafkaError as error:
            await self._fail(error)
        return False

    @Service.task
    async def _commit_periodically(self) -> None:
        """Commit every commit_interval_s, between two batches' sends."""
        self._last_commit = time.monotonic()
        while not self.should_stop:
            await self.sleep(self._commit_interval_s)
            if self.due():
                async with self.lock:
                    await self.commit()

    async def _producer(self, partition: int) -> AIOKafkaProducer | None:
        """The partition's producer, started on first use; None once the partition is
        another worker's (starting one then would fence the rightful owner)."""
        producer = self._producers.get(partition)
        if producer is not None:
            return producer
        async with self._starting:
            producer = self._producers.get(partition)
            if producer is not None:
                return producer
            if partition in self._fenced_off or not self._owns(partition):
                return None
            producer = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap_servers,
                transactional_id=self.transactional_id(partition),
                transaction_timeout_ms=self._transaction_timeout_ms,
                # Batches are whole already; a linger would hold each one, and the
                # next batch's send to the same partition waits for the previous to leave.
                linger_ms=0,
                max_batch_size=MAX_BATCH_BYTES,
                acks="all",
                **kafka_kwargs(self._security),
            )
            try:
                await producer.start()  # fences the previous owner, aborting its transaction
            except KafkaError as error:
                await producer.stop()
                await self._fail(error)
            self._producers[partition] = producer
        return producer

    async def _close(self, partition: int) -> None:
        """Stop the partition's producer; what it handled stays known (committed, or left to
        the next owner when it was fenced off: see :meth:`_fenced`)."""
        self._open.discard(partition)
        self.offsets.closed(partition)
        producer = self._producers.pop(partition, None)
        if producer is not None:
            await producer.stop()

    async def _fenced(self, partition: int) -> None:
        log.warning(
            "producer %s was fenced: %s[%s] belongs to another worker now, which reads its "
            "uncommitted records again", self.transactional_id(partition), self.topic, partition,
        )
        self._fenced_off.add(partition)
        self.offsets.lost(partition)
        await self._close(partition)

    async def _fail(self, error: BaseException) -> None:
        log.error("Kafka transaction failed (%r); stopping the worker", error)
        await self.crash(error)
        raise error
