"""The relations reader: the records of ``relations`` into the social graph in Redis,
exactly once, by the events path's machinery (:mod:`streams.events`).

One aiokafka consumer per worker in the group ``{app_id}-relations``, read committed.
Every partition of ``relations`` has a transactional producer
(``{app_id}-{relations topic}-{partition}``, :class:`streams.events.transactions.Transactions`):
a batch's dead letters go into its partitions' open transactions, committed with the
partitions' next offsets every ``commit_interval_s``. The graph's changes are written
before that, in one Redis transaction per batch that also moves the partitions' applied
offsets (``applied:{app_id}-relations``) under ``WATCH`` (:meth:`OnlineState.write_relations`):
a record read again after a crash changes nothing twice, and its dead letter is in the
transaction the crash aborted or in a committed one, never both. The graph lives in
Redis; there is no changelog to restore.

On a Redis Cluster the batch is written slot by slot, each slot fenced by its own applied
offsets (:mod:`streams.clustergraph`); edges a failed master took with it are read again
from ``relations`` itself (:class:`RelationsLog`), only their span, and applied in the
slots that lost them before their fences move on.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import Counter, deque
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import KafkaError
from mode import Service

from contracts.relations import RelationLimits
from contracts.security import KafkaSecurity
from streams.events.partitions import Subscribed, consumer_options, seek_committed
from streams.events.transactions import Transactions
from streams.graph import EdgeChange, relation_change, relation_outcomes
from streams.metrics import StreamsMetrics
from streams.online import AppliedOffsets, OnlineState
from streams.recovery import read_span, until_read
from streams.records import INTERNAL_ERROR, Output, Record, Rejected, dead_letter, now_ms
from streams.slots import MOVES_KEPT

log = logging.getLogger(__name__)


def dead_letters(outcomes: Sequence[tuple[Record, EdgeChange | Rejected]], *, dlq: str,
                 now_ms: int) -> dict[int, list[Output]]:
    """The dead letter of each rejected record, per partition of ``relations``."""
    records: dict[int, list[Output]] = {}
    for record, outcome in outcomes:
        if isinstance(outcome, Rejected):
            letter = dead_letter(record, reason=outcome.reason, detail=outcome.detail,
                                 now_ms=now_ms)
            records.setdefault(record.partition, []).append(
                (dlq, None, record.key, letter.SerializeToString()))
    return records


class BatchClock:
    """The reader's clock at each batch it handled, per partition: a record read back after
    a failover is decided as it was the first time (its timestamp checked against the
    same now), so a record once dead-lettered is never applied in some slots only.
    Remembers the last ``kept`` batches per partition; an older record gets the time now."""

    def __init__(self, kept: int = MOVES_KEPT) -> None:
        self._kept = kept
        self._batches: dict[int, deque[tuple[int, int]]] = {}  # (newest offset, now ms)
        self._forgotten: dict[int, int] = {}  # newest offset no longer remembered

    def note(self, records: Sequence[Record], now: int) -> None:
        newest: dict[int, int] = {}
        for r in records:
            newest[r.partition] = max(newest.get(r.partition, -1), r.offset)
        for partition, offset in newest.items():
            batches = self._batches.setdefault(partition, deque())
            if batches and batches[-1][0] >= offset:
                continue
            if len(batches) >= self._kept:
                self._forgotten[partition] = batches.popleft()[0]
            batches.append((offset, now))

    def at(self, partition: int, offset: int) -> int | None:
        """The clock of the batch that held the record, None when not remembered."""
        batches = self._batches.get(partition)
        if not batches or offset <= self._forgotten.get(partition, -1):
            return None
        at = bisect.bisect_left(batches, (offset, -1))
        return batches[at][1] if at < len(batches) else None


class RelationsLog:
    """The edge changes of lost offsets of `topic`, read back from it (a consumer of no
    group, only their span) and decided as at first (`clock`); a broker away only delays
    the read, every `retry_s`."""

    def __init__(self, *, servers: list[str], topic: str, limits: RelationLimits,
                 clock: BatchClock, security: KafkaSecurity | None = None,
                 retry_s: float = 5.0) -> None:
        self._servers, self._topic, self._limits = servers, topic, limits
        self._clock, self._security, self._retry_s = clock, security, retry_s

    async def changes(self, lost: Mapping[int, tuple[int, int]]) -> list[EdgeChange]:
        found = await until_read(
            lambda: read_span(self._servers, self._topic, lost, security=self._security),
            f"lost offsets of {self._topic}", self._retry_s)
        now = now_ms()
        changes = []
        for r in found:
            record = Record(r.topic, r.partition, r.offset, r.key, r.value)
            outcome = relation_change(record, limits=self._limits,
                                      now_ms=self._clock.at(r.partition, r.offset) or now)
            if isinstance(outcome, EdgeChange):
                changes.append(outcome)
        return changes


class RelationsConsumer(Subscribed, Service):
    """Consumes ``topic`` in ``group`` and applies its edges to the graph in Redis."""

    def __init__(
        self,
        *,
        online: OnlineState,
        transactions: Transactions,
        metrics: StreamsMetrics,
        bootstrap_servers: list[str],
        topic: str,
        group: str,
        dlq: str,
        limits: RelationLimits,
        fanout_threshold: int,
        batch_size: int,
        batch_wait_ms: int,
        fetch_max_wait_ms: int,
        session_timeout_s: float,
        security: KafkaSecurity | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._online = online
        self._transactions = transactions
        self._metrics = metrics
        self.topic = topic
        self.group = group
        self._dlq = dlq
        self._limits = limits
        self._threshold = fanout_threshold
        self._applied = AppliedOffsets(online.keys.applied(group), topic, group)
        self._clock = BatchClock()
        # on a Redis Cluster: what a failed master lost, read back from the topic
        self._log = RelationsLog(servers=bootstrap_servers, topic=topic, limits=limits,
                                 clock=self._clock, security=security)
        self._batch_size = batch_size
        self._batch_wait_ms = batch_wait_ms
        self._lock = asyncio.Lock()  # a rebalance waits for the batch in progress
        self.add_dependency(transactions)
        self._consumer_options = consumer_options(
            bootstrap_servers=bootstrap_servers, group=group,
            fetch_max_wait_ms=fetch_max_wait_ms, session_timeout_s=session_timeout_s,
            security=security,
        )
        self._consumer: AIOKafkaConsumer | None = None
        self.applied = 0
        self.rejected: Counter[str] = Counter()

    async def on_stop(self) -> None:
        async with self._lock:
            await self._transactions.finish()
        if self._consumer is not None:
            await self._consumer.stop()

    async def assigned(self, partitions: set[int]) -> None:
        async with self._lock:
            await self._transactions.assigned(partitions)
            # No commit yet: auto_offset_reset (earliest) reads the partition from its start.
            await seek_committed(self.consumer, self._transactions.offsets, self.topic,
                                 partitions)
        log.info("relations partitions %s assigned", sorted(partitions))

    async def revoked(self, partitions: set[int]) -> None:
        async with self._lock:
            await self._transactions.revoked(partitions)
        log.info("relations partitions %s revoked", sorted(partitions))

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
            async with self._lock:
                if self.should_stop:
                    return
                handled = transactions.offsets.handled
                records = [record for tp, part in batches.items()
                           if transactions.owns(tp.partition) for record in part
                           if not handled(record.partition, record.offset)]
                if records:
                    await self._handle(records)

    async def _handle(self, consumed: list[ConsumerRecord]) -> None:
        """One batch: the graph written to Redis, then the dead letters and offsets into
        the partitions' transactions (the caller holds the lock)."""
        self._metrics.relations_in.inc(len(consumed))
        records = [Record(r.topic, r.partition, r.offset, r.key, r.value) for r in consumed]
        now = now_ms()
        self._clock.note(records, now)
        outcomes = relation_outcomes(records, now_ms=now, limits=self._limits)
        changes = [o for _, o in outcomes if isinstance(o, EdgeChange)]
        try:
            applied, hot = await self._online.write_relations(
                changes, applied=self._applied, fanout_threshold=self._threshold,
                recovery=self._log)
        except Exception as error:  # a bug, not bad input: dead-lettered, not lost
            log.exception("writing %s edge changes failed", len(changes))
            failed = Rejected(INTERNAL_ERROR, repr(error))
            outcomes = [(r, failed if isinstance(o, EdgeChange) else o) for r, o in outcomes]
            applied, hot = 0, None
        self.applied += applied
        self._metrics.relations_applied.inc(applied)
        if hot is not None:
            self._metrics.hot_accounts.set(hot.hot)
            if hot.entered or hot.left:
                log.info("%s accounts became hot, %s stopped being hot; %s hot",
                         hot.entered, hot.left, hot.hot)
        rejected = Counter(o.reason for _, o in outcomes if isinstance(o, Rejected))
        self.rejected.update(rejected)
        for reason, count in rejected.items():
            self._metrics.relations_dead_lettered.labels(reason).inc(count)
        outputs = dead_letters(outcomes, dlq=self._dlq, now_ms=now_ms())
        await self._transactions.hand_over(outputs, ((r.partition, r.offset) for r in records))
