"""``TrackEvents``: events to Kafka ``events`` (key user_id), acknowledged by all replicas."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from protos import events_pb2
from serving.errors import BrokerUnavailable


class EventSink:
    """Produces event batches and returns only when every event is acknowledged."""

    def __init__(self, producer: AIOKafkaProducer, *, topic: str, timeout_s: float) -> None:
        self._producer = producer
        self._topic = topic
        self._timeout_s = timeout_s

    async def send(self, events: Sequence[events_pb2.Event]) -> int:
        """Produce `events` in order; how many were acknowledged (all of them, or it raises).

        On BrokerUnavailable some events may have been written: a caller retries the
        batch, and the streams worker drops the repeats by event id.
        """
        try:
            async with asyncio.timeout(self._timeout_s):
                acks = [
                    await self._producer.send(
                        self._topic,
                        key=event.user_id.encode("utf-8"),
                        value=event.SerializeToString(),
                    )
                    for event in events
                ]
                await asyncio.gather(*acks)
        except (KafkaError, TimeoutError) as error:
            reason = str(error) or type(error).__name__
            raise BrokerUnavailable(
                f"Kafka did not acknowledge the events within {self._timeout_s} s: {reason}"
            ) from error
        return len(acks)
