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
from ``relations`` itself (:func:`read_back_relations`), only their span.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import KafkaError
from mode import Service

from contracts.relations import RelationLimits
from contracts.security import KafkaSecurity
from streams.events.partitions import Subscribed, consumer_options, seek_committed
from streams.events.transactions import Transactions
from streams.graph import EdgeChange, relation_outcomes
from streams.metrics import StreamsMetrics
from streams.online import AppliedOffsets, OnlineState
from streams.recovery import read_span
from streams.records import INTERNAL_ERROR, Output, Record, Rejected, dead_letter, now_ms

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


async def read_back_relations(
    online: OnlineState, *, servers: list[str], topic: str, applied: AppliedOffsets,
    limits: RelationLimits, threshold: int, security: KafkaSecurity | None = None,
) -> int:
    """On a Redis Cluster: the records whose edges a failed-over master lost (a slot's
    fence found below what this writer applied, :meth:`OnlineState.take_relations_lost`),
    read again from `topic` and written again; each slot's fence lets only the slots that
    lost them apply them. Their dead letters were sent the first time. How many edge
    changes were read back (0: nothing was lost)."""
    lost = online.take_relations_lost()
    if not lost:
        return 0
    records = [Record(r.topic, r.partition, r.offset, r.key, r.value)
               for r in await read_span(servers, topic, lost, security=security)]
    changes = [o for _, o in relation_outcomes(records, now_ms=now_ms(), limits=limits)
               if isinstance(o, EdgeChange)]
    again, _ = await online.write_relations(changes, applied=applied, fanout_threshold=threshold)
    log.warning("read back %s records of %s whose edges a failed Redis master lost "
                "(offsets %s); %s applied again", len(records), topic,
                {p: f"{a}-{b}" for p, (a, b) in sorted(lost.items())}, again)
    return len(changes)


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
        self._servers = bootstrap_servers
        self._security = security
        self.read_back = 0  # records read again after a failover lost their edges
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

    async def _read_back_lost(self) -> None:
        self.read_back += await read_back_relations(
            self._online, servers=self._servers, topic=self.topic, applied=self._applied,
            limits=self._limits, threshold=self._threshold, security=self._security)

    async def _handle(self, consumed: list[ConsumerRecord]) -> None:
        """One batch: the graph written to Redis, then the dead letters and offsets into
        the partitions' transactions (the caller holds the lock)."""
        self._metrics.relations_in.inc(len(consumed))
        records = [Record(r.topic, r.partition, r.offset, r.key, r.value) for r in consumed]
        outcomes = relation_outcomes(records, now_ms=now_ms(), limits=self._limits)
        changes = [o for _, o in outcomes if isinstance(o, EdgeChange)]
        try:
            applied, hot = await self._online.write_relations(
                changes, applied=self._applied, fanout_threshold=self._threshold)
        except Exception as error:  # a bug, not bad input: dead-lettered, not lost
            log.exception("writing %s edge changes failed", len(changes))
            failed = Rejected(INTERNAL_ERROR, repr(error))
            outcomes = [(r, failed if isinstance(o, EdgeChange) else o) for r, o in outcomes]
            applied, hot = 0, None
        self.applied += applied
        self._metrics.relations_applied.inc(applied)
        await self._read_back_lost()
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
