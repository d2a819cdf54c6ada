"""Online state lost with a failed Redis Cluster master, read back from ``events.enriched``
(and the users' deletions among the lost records, from ``events``).

A master acknowledges a write before its replica has it, so a master that dies can take
the newest writes of its slots with it while the promoted replica serves what it had. The
slot writer (:mod:`streams.slots`) finds that out from a slot's fence, which is then below
what it applied: partition p's records in ``(fence, applied]`` lost their effects in that
slot. Those records were accepted, so each has an enriched event in the event log, which
names its source partition and offset and carries all a touch needs (user, item, time,
event type, weight). :class:`EnrichedLog` reads them back from there and the writer
applies them again in that slot's next share, before the fence moves past them. Nothing
is read from the events topic, no worker state changes, and only the log's tail since the
first lost write is read: the time the writer first applied a lost offset bounds the
enriched events' timestamps from below (each is appended after its effects were written),
so the read starts at that time's offset in each partition (``offsets_for_times``).

The read includes records of transactions not yet committed (``read_uncommitted``): the
newest lost records may be in the worker's own open transaction, whose sends the writer
has delivered first (``OnlineState.before_read_back``). A record read twice (an aborted transaction of an earlier
owner, then the record's committed copy) counts once: a touch is located by its source
partition and offset. The read ends once the newest lost record of every partition was
found and every partition was read to its end.

A deletion's control record has no enriched event: :meth:`EnrichedLog.deletions` reads
the lost offsets of the events topic itself (their exact span, no time look-up), so a
user deleted in the lost window is deleted again in those slots, before the records of
theirs that came after it; a deletion is never undone by a failover.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from google.protobuf.message import DecodeError

from contracts.deletions import ControlRecordError, is_control, parse_control
from contracts.security import KafkaSecurity, kafka_kwargs
from protos import events_pb2
from streams.feed import full_assignment
from streams.online import Deletion, Touch

log = logging.getLogger(__name__)

Lost = Mapping[int, tuple[int, int]]  # partition -> (first offset lost, newest lost)
R = TypeVar("R")


class NotYet(Exception):
    """A read found the log short of what it must hold (tried again)."""


class EnrichedLog:
    """Touches of lost records, from the enriched events of `topic` whose source is
    `source_topic`. ``touches`` tries again every `retry_s` until each partition's newest
    lost record is found: a broker away only delays the recovery, it loses nothing."""

    def __init__(self, *, bootstrap_servers: list[str], topic: str, source_topic: str,
                 security: KafkaSecurity | None = None, retry_s: float = 5.0, poll_ms: int = 500) -> None:
        self._servers = bootstrap_servers
        self._topic = topic
        self._source = source_topic
        self._security = security
        self._retry_s = retry_s
        self._poll_ms = poll_ms

    async def touches(self, lost: Lost, *, since_ms: int) -> list[Touch]:
        """The touches of the records of `lost`, in source offset order per partition;
        `since_ms` is when the writer first applied one of them (0: unknown, the whole
        log is read)."""

        async def read() -> list[Touch]:
            found = await self._read(lost, since_ms)
            missing = {p: hi for p, (_, hi) in lost.items() if (p, hi) not in found}
            if missing:
                raise NotYet(f"the newest lost records {missing} are not in it yet")
            return [found[key] for key in sorted(found)]

        return await self._until_read(read, f"{_count(lost)} lost records from {self._topic}")

    async def deletions(self, lost: Lost) -> list[Deletion]:
        """The users' deletions among the records of `lost`, read from the events topic
        itself, in offset order per partition (retried like :meth:`touches`)."""
        return await self._until_read(
            lambda: self._read_deletions(lost),
            f"the deletions among {_count(lost)} lost records of {self._source}")

    async def _until_read(self, read: Callable[[], Awaitable[R]], what: str) -> R:
        return await until_read(read, what, self._retry_s)

    async def _read_deletions(self, lost: Lost) -> list[Deletion]:
        found = [d for r in await read_span(self._servers, self._source, lost,
                                            security=self._security, poll_ms=self._poll_ms)
                 if (d := _deletion(r.partition, r.offset, r.key, r.value, r.headers))
                 is not None]
        return sorted(found, key=lambda d: (d.partition, d.offset))

    async def _read(self, lost: Lost, since_ms: int) -> dict[tuple[int, int], Touch]:
        consumer = AIOKafkaConsumer(
            self._topic, bootstrap_servers=self._servers, group_id=None,
            enable_auto_commit=False, isolation_level="read_uncommitted",
            client_id="streamrec-streams-recovery", **kafka_kwargs(self._security),
        )
        await consumer.start()
        found: dict[tuple[int, int], Touch] = {}
        scanned = 0
        try:
            partitions = await full_assignment(consumer, (self._topic,))
            ends = await consumer.end_offsets(partitions)
            starts = await consumer.offsets_for_times({tp: since_ms for tp in partitions})
            todo = {}
            for tp in partitions:
                start = starts.get(tp)
                if start is None or start.offset >= ends[tp]:
                    continue
                consumer.seek(tp, start.offset)
                todo[tp] = ends[tp]
            while todo:
                batches = await consumer.getmany(*todo, timeout_ms=self._poll_ms)
                for tp, records in batches.items():
                    scanned += len(records)
                    for record in records:
                        touch = self._touch(record.value, lost)
                        if touch is not None:
                            found[touch.partition, touch.offset] = touch
                for tp in list(todo):
                    if await consumer.position(tp) >= todo[tp]:
                        del todo[tp]
        finally:
            await consumer.stop()
        log.info("scanned %s records of %s from %s ms on: %s of them lost", scanned,
                 self._topic, since_ms, len(found))
        return found

    def _touch(self, value: bytes | None, lost: Lost) -> Touch | None:
        if value is None:
            return None
        try:
            enriched = events_pb2.EnrichedEvent.FromString(value)
        except DecodeError:
            return None  # an undecodable record of the log is no lost touch
        span = lost.get(enriched.source_partition)
        if enriched.source_topic != self._source or span is None \
                or not span[0] <= enriched.source_offset <= span[1]:
            return None
        event = enriched.event
        return Touch(event.user_id, event.item_id, event.timestamp_ms, enriched.weight,
                     event.type, enriched.source_partition, enriched.source_offset)


def _deletion(partition: int, offset: int, key: bytes | None, value: bytes | None,
              headers: Sequence[tuple[str, bytes]]) -> Deletion | None:
    """The deletion of a control record; None for an event or for a malformed one (which
    was dead-lettered, and deleted nobody)."""
    if not is_control(headers):
        return None
    try:
        deletion = parse_control(key, value, headers)
    except ControlRecordError:
        return None
    return Deletion(deletion.user_id, partition, offset)


def _count(lost: Lost) -> int:
    return sum(hi - lo + 1 for lo, hi in lost.values())


async def read_span(servers: list[str], topic: str, lost: Lost, *,
                    security: KafkaSecurity | None = None, poll_ms: int = 500,
                    ) -> list[ConsumerRecord]:
    """The records of `topic` at the offsets of `lost` (partition -> first, newest), read
    with a consumer of no group, in offset order per partition; a partition whose end
    comes first ends there."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=servers, group_id=None, enable_auto_commit=False,
        client_id="streamrec-streams-recovery", **kafka_kwargs(security),
    )
    await consumer.start()
    found: list[ConsumerRecord] = []
    try:
        todo = {TopicPartition(topic, p): span for p, span in lost.items()}
        consumer.assign(list(todo))
        for tp, (first, _) in todo.items():
            consumer.seek(tp, first)
        ends = await consumer.end_offsets(list(todo))
        while todo:
            batches = await consumer.getmany(*todo, timeout_ms=poll_ms)
            for tp, records in batches.items():
                newest = todo[tp][1] if tp in todo else -1
                found += [r for r in records if r.offset <= newest]
            for tp in list(todo):
                position = await consumer.position(tp)
                if position > todo[tp][1] or position >= ends[tp]:
                    del todo[tp]
    finally:
        await consumer.stop()
    return sorted(found, key=lambda r: (r.partition, r.offset))


async def until_read(read: Callable[[], Awaitable[R]], what: str, retry_s: float) -> R:
    """`read()` until it succeeds, every `retry_s`: a broker away only delays the
    recovery, it loses nothing."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await read()
        except Exception as error:  # noqa: BLE001 - any Kafka failure is worth a retry
            log.warning("reading back %s failed (attempt %s): %s; trying again in %.0f s",
                        what, attempt, error if isinstance(error, NotYet) else repr(error),
                        retry_s)
        await asyncio.sleep(retry_s)
