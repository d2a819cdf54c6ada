"""``TrackEvents``: events to Kafka ``events`` (key user_id), acknowledged by all replicas;
``TrackRelations``: edges to ``relations`` (key the edge), the same way; and the log of served recommendations to Kafka ``recommendations``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from contracts.relations import record_of
from protos import events_pb2
from serving.errors import BrokerUnavailable

log = logging.getLogger(__name__)


class AcknowledgedSink:
    """Produces records to one topic and returns only when every one is acknowledged."""

    def __init__(self, producer: AIOKafkaProducer, *, topic: str, timeout_s: float,
                 what: str = "events") -> None:
        self._producer = producer
        self._topic = topic
        self._timeout_s = timeout_s
        self._what = what

    async def send_records(self, records: Iterable[tuple[bytes, bytes | None]]) -> int:
        """Produce ``(key, value)`` records in order (a None value is a tombstone); how many
        were acknowledged (all of them, or it raises BrokerUnavailable)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                acks = [await self._producer.send(self._topic, key=key, value=value)
                        for key, value in records]
                await asyncio.gather(*acks)
        except (KafkaError, TimeoutError) as error:
            reason = str(error) or type(error).__name__
            raise BrokerUnavailable(
                f"Kafka did not acknowledge the {self._what} within {self._timeout_s} s: {reason}"
            ) from error
        return len(acks)


class EventSink(AcknowledgedSink):
    """``TrackEvents``: events to ``events``, key user_id."""

    async def send(self, events: Sequence[events_pb2.Event]) -> int:
        """Produce `events` in order; how many were acknowledged (all of them, or it raises).

        On BrokerUnavailable some events may have been written: a caller retries the
        batch, and the streams worker drops the repeats by event id.
        """
        return await self.send_records(
            (event.user_id.encode("utf-8"), event.SerializeToString()) for event in events)


class RelationSink(AcknowledgedSink):
    """``TrackRelations``: edges to ``relations`` under their edge key, a removal as a
    tombstone (contracts.relations.record_of)."""

    async def send(self, relations: Sequence[events_pb2.Relation]) -> int:
        """Produce `relations` in order; how many were acknowledged. On BrokerUnavailable a
        caller retries the call: writing an edge's state again changes nothing."""
        return await self.send_records(record_of(relation) for relation in relations)


class RecommendationLog:
    """Every served answer to Kafka ``recommendations`` (key user_id), off the request path.

    :meth:`record` only queues; a background task produces. When Kafka falls behind and
    the queue is full, records are dropped and counted (``dropped``) rather than slowing
    answers down: the report then undercounts impressions, it never blocks serving.
    """

    def __init__(self, producer: AIOKafkaProducer, *, topic: str, queue_size: int) -> None:
        self._producer = producer
        self._topic = topic
        self._queue: asyncio.Queue[events_pb2.RecommendationLog] = asyncio.Queue(queue_size)
        self._in_flight: asyncio.Task[None] | None = None  # the entries being handed to Kafka
        self.dropped = 0

    def record(self, entry: events_pb2.RecommendationLog) -> None:
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self) -> None:
        """Produce queued records until cancelled; then what is queued is flushed by :meth:`drain`."""
        while True:
            entries = [await self._queue.get()]
            while not self._queue.empty():  # all that is queued: one task per wake-up, not per entry
                entries.append(self._queue.get_nowait())
            # Shielded: cancelling the loop at shutdown must not lose the entries it holds
            # (the first send to a topic waits for metadata); drain() finishes them.
            self._in_flight = asyncio.ensure_future(self._send_all(entries))
            await asyncio.shield(self._in_flight)

    async def drain(self) -> None:
        """Finish the entry in flight and send what is still queued (at shutdown, before
        the producer stops)."""
        if self._in_flight is not None:
            await self._in_flight
        while not self._queue.empty():
            await self._send(self._queue.get_nowait())

    async def _send_all(self, entries: list[events_pb2.RecommendationLog]) -> None:
        for entry in entries:
            await self._send(entry)

    async def _send(self, entry: events_pb2.RecommendationLog) -> None:
        try:
            await self._producer.send(self._topic, key=entry.user_id.encode("utf-8"),
                                      value=entry.SerializeToString())
        except KafkaError as error:
            self.dropped += 1
            log.warning("recommendation %s not logged: %s", entry.recommendation_id, error)
