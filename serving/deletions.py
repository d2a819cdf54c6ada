"""``Admin.DeleteUser``: the request on ``deletions`` and its control record on ``events``,
written in one Kafka transaction (contracts.deletions).

The streams worker carries the deletion out when it reaches the control record in the
user's partition of ``events`` (after every event of theirs written before it); the trainer
and the reports read ``deletions``. The call is answered once the transaction committed:
both records then exist, or neither does (a failed call is retried by the caller; asking
twice deletes what came in between, nothing else).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, ProducerFenced

from contracts.deletions import control_headers, user_id_violation
from protos import events_pb2
from serving.errors import BrokerUnavailable, FieldViolation, InvalidRequest

log = logging.getLogger(__name__)


def check_user_id(user_id: str, max_chars: int) -> str:
    """`user_id` if it can be deleted; InvalidRequest with its field violation else."""
    problem = user_id_violation(user_id, max_chars)
    if problem is not None:
        raise InvalidRequest(problem.description, [
            FieldViolation(problem.field, problem.reason.upper(), problem.description)])
    return user_id


class DeletionWriter:
    """Writes deletions with a transactional producer of its own (acks=all, idempotent);
    one transaction at a time. ``make_producer`` builds a new one after a fence (another
    process started with the same transactional id)."""

    def __init__(self, make_producer: Callable[[], AIOKafkaProducer], *, deletions_topic: str,
                 events_topic: str, timeout_s: float, requested_by: str,
                 clock: Callable[[], int]) -> None:
        self._make_producer = make_producer
        self._producer: AIOKafkaProducer | None = None
        self._deletions_topic = deletions_topic
        self._events_topic = events_topic
        self._timeout_s = timeout_s
        self._requested_by = requested_by
        self._clock = clock
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect and initialise the transactional id (fencing a predecessor's)."""
        producer = self._make_producer()
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def delete(self, user_id: str) -> events_pb2.UserDeletion:
        """Write `user_id`'s deletion and its control record, committed together; the
        deletion written. BrokerUnavailable when Kafka does not commit within the timeout."""
        async with self._lock:
            deletion = events_pb2.UserDeletion(user_id=user_id, requested_at_ms=self._clock(),
                                               requested_by=self._requested_by)
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._write(deletion)
            except ProducerFenced as error:
                await self._restart()
                raise BrokerUnavailable(f"the deletion producer was fenced ({error}); "
                                        "try again") from error
            except (KafkaError, TimeoutError) as error:
                await self._restart()
                reason = str(error) or type(error).__name__
                raise BrokerUnavailable(
                    f"Kafka did not commit the deletion within {self._timeout_s} s: {reason}"
                ) from error
        log.info("deletion of user %s requested", user_id)
        return deletion

    async def _write(self, deletion: events_pb2.UserDeletion) -> None:
        if self._producer is None:
            await self.start()
        producer = self._producer
        assert producer is not None
        key, value = deletion.user_id.encode("utf-8"), deletion.SerializeToString()
        async with producer.transaction():
            sent = [await producer.send(self._deletions_topic, value, key=key),
                    await producer.send(self._events_topic, value, key=key,
                                        headers=control_headers())]
            await asyncio.gather(*sent)

    async def _restart(self) -> None:
        """A transaction in an unknown state: a new producer aborts it on its start."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.stop()
            except KafkaError as error:
                log.warning("stopping the deletion producer: %s", error)
