"""A user's deletion (docs/contracts.md §2 "deletions"): the control record on ``events``,
the compacted ``deletions`` topic read whole, and the rule its readers leave events out by.

- **Control record.** ``Admin.DeleteUser`` writes, in one Kafka transaction, the
  ``UserDeletion`` to ``deletions`` (key user id) and the same message to ``events``,
  keyed by the user id so that it lands in the user's partition, ordered with their
  events, with the header :data:`CONTROL_HEADER` = :data:`USER_DELETION`. A record of
  ``events`` with that header is not an event: the streams worker carries the deletion
  out (:func:`parse_control` first, before any event validation). ``TrackEvents`` and
  ``ingest`` write no headers, so they cannot make one.
- **The rule.** :class:`Deletions` holds each deleted user's newest ``requested_at_ms``;
  an event (or a served recommendation) of that user from *before* that time is left
  out (:meth:`Deletions.removes`), one from after it is a new user's. The trainer,
  ``training evaluate --kafka`` and ``serving.cli.report`` apply it to what they read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from google.protobuf.message import DecodeError

from contracts.catchup import read_to_end, topic_partitions
from contracts.events import MISSING_FIELD, Violation
from contracts.relations import TOO_LONG
from contracts.security import KafkaSecurity, kafka_kwargs
from protos import events_pb2

CONTROL_HEADER = "streamrec-control"
USER_DELETION = b"user-deletion"
MAX_USER_ID_CHARS = 1024  # default length limit of a deleted user's id
# The dead-letter reason of a record marked as a control record that is not a usable one.
BAD_CONTROL_RECORD = "bad_control_record"

Headers = Sequence[tuple[str, bytes | None]]


class ControlRecordError(ValueError):
    """A record marked as a control record that is not a usable ``UserDeletion``."""

    reason = BAD_CONTROL_RECORD


def user_id_violation(user_id: str, max_chars: int = MAX_USER_ID_CHARS) -> Violation | None:
    """What is wrong with `user_id` as the id of a user to delete, if anything."""
    if not user_id:
        return Violation("user_id", MISSING_FIELD, "user_id is required")
    if len(user_id) > max_chars:
        return Violation("user_id", TOO_LONG, f"user_id is longer than {max_chars} characters")
    return None


def control_headers() -> list[tuple[str, bytes]]:
    """The headers of a deletion's control record on ``events``."""
    return [(CONTROL_HEADER, USER_DELETION)]


def is_control(headers: Headers | None) -> bool:
    """True for a record carrying :data:`CONTROL_HEADER` (whatever its value: a control
    record of a kind this version does not know is rejected, never taken for an event)."""
    return any(name == CONTROL_HEADER for name, _ in headers or ())


def parse_control(key: bytes | None, value: bytes | None, headers: Headers | None,
                  max_id_chars: int = MAX_USER_ID_CHARS) -> events_pb2.UserDeletion:
    """The ``UserDeletion`` of a control record; :class:`ControlRecordError` for an
    unknown kind, a value that does not decode, a bad user id, or a key that is not it."""
    kinds = [kind for name, kind in headers or () if name == CONTROL_HEADER]
    if kinds != [USER_DELETION]:
        raise ControlRecordError(f"control record kinds {kinds!r}; known: {USER_DELETION!r}")
    try:
        deletion = events_pb2.UserDeletion.FromString(value or b"")
    except DecodeError as error:
        raise ControlRecordError(f"not a UserDeletion: {error}") from error
    problem = user_id_violation(deletion.user_id, max_id_chars)
    if problem is not None:
        raise ControlRecordError(problem.description)
    if key != deletion.user_id.encode("utf-8"):
        raise ControlRecordError("the record key is not the deleted user's id")
    if deletion.requested_at_ms <= 0:
        raise ControlRecordError("requested_at_ms is not set")
    return deletion


@dataclass
class Deletions:
    """Deleted users and the newest time each asked (``deletions``, read whole)."""

    requested_at_ms: dict[str, int] = field(default_factory=dict)
    undecodable: int = 0

    def __len__(self) -> int:
        return len(self.requested_at_ms)

    def removes(self, user_id: str, timestamp_ms: int) -> bool:
        """True when an event of `user_id` at `timestamp_ms` (event time, ms) predates the
        user's deletion and must be left out."""
        deleted_at = self.requested_at_ms.get(user_id)
        return deleted_at is not None and timestamp_ms < deleted_at

    def fold(self, records: Iterable[tuple[bytes | None, bytes | None]]) -> None:
        """Fold ``(key, value)`` records of the topic in offset order: the newest request of
        a key wins; a tombstone removes it; a value that does not decode is counted."""
        for key, value in records:
            if key is None:
                continue
            user_id = key.decode("utf-8", errors="replace")
            if value is None:
                self.requested_at_ms.pop(user_id, None)
                continue
            try:
                deletion = events_pb2.UserDeletion.FromString(value)
            except DecodeError:
                self.undecodable += 1
                continue
            self.requested_at_ms[deletion.user_id or user_id] = int(deletion.requested_at_ms)


async def read_deletions(bootstrap_servers: str | list[str], topic: str, *, client_id: str,
                         security: KafkaSecurity | None = None) -> Deletions:
    """Every deletion on `topic` up to its end offsets now, read committed (serving writes
    them in transactions); an absent topic holds none."""
    deletions = Deletions()
    partitions = await topic_partitions(bootstrap_servers, client_id, topic, security)
    if not partitions:
        return deletions
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None,
                                enable_auto_commit=False, client_id=client_id,
                                isolation_level="read_committed", **kafka_kwargs(security))
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        held: list[ConsumerRecord] = []
        ends = await read_to_end(consumer, partitions, held.extend)
        deletions.fold((r.key, r.value) for r in held
                       if r.offset < ends[TopicPartition(r.topic, r.partition)])
    finally:
        await consumer.stop()
    return deletions
