"""The two agents' record handlers: decode, call the pure functions, send, write Redis.

Every record of ``events`` ends in exactly one of ``events.enriched`` or ``events.dlq``,
sent in the Kafka transaction that commits the record's offset (``streams.delivery``);
a bad record of ``items`` goes to ``events.dlq`` too (``origin_topic`` tells them apart),
at least once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

from faust.types import EventT, TableT, TopicT
from faust.types.tuples import Message

from protos import events_pb2
from streams.catalog import Catalog
from streams.delivery import Transactions
from streams.encoder import ItemEncoder
from streams.errors import RejectedInput
from streams.history import UserState, decode_state, encode_state
from streams.online import OnlineState, Touch, UserVector
from streams.processing import (
    INTERNAL_ERROR,
    Accepted,
    Policy,
    Record,
    Rejected,
    admit_batch,
    dead_letter,
    enriched_event,
)
from streams.text import item_text
from streams.validation import parse_item
from streams.vectors import to_bytes, user_vector

log = logging.getLogger(__name__)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def to_record(message: Message) -> Record:
    return Record(message.topic, message.partition, message.offset, message.key, message.value)


def dead_letter_bytes(record: Record, *, reason: str, detail: str) -> bytes:
    return dead_letter(record, reason=reason, detail=detail, now_ms=now_ms()).SerializeToString()


def new_records(events: Sequence[EventT], *, handled: Callable[[int, int], bool]) -> list[Record]:
    """The batch less records handed over again (after a rebalance or a seek back): those
    whose outputs were sent already (``handled(partition, offset)``), and repeats within
    the batch; in the order they came."""
    records: dict[tuple[int, int], Record] = {}
    for event in events:
        record = to_record(event.message)
        if not handled(record.partition, record.offset):
            records.setdefault((record.partition, record.offset), record)
    return list(records.values())


async def send_dead_letter(dlq: TopicT, record: Record, *, reason: str, detail: str) -> None:
    await dlq.send(key=record.key, value=dead_letter_bytes(record, reason=reason, detail=detail))


class ItemsHandler:
    """Embeds batches of catalog items and publishes their vectors."""

    def __init__(
        self, *, catalog: Catalog, encoder: ItemEncoder, item_vectors: TopicT, dlq: TopicT,
        max_item_bytes: int,
    ) -> None:
        self._catalog = catalog
        self._encoder = encoder
        self._item_vectors = item_vectors
        self._dlq = dlq
        self._max_item_bytes = max_item_bytes
        self.embedded = 0

    async def handle(self, events: Sequence[EventT]) -> None:
        latest: dict[str, tuple[Record, events_pb2.Item]] = {}
        for event in events:
            record = to_record(event.message)
            if record.value is None:
                continue  # a tombstone: the catalog feed removes the item
            try:
                item = parse_item(record.value, max_bytes=self._max_item_bytes)
            except RejectedInput as error:
                log.warning("item record %s[%s]@%s rejected: %s", record.topic, record.partition,
                            record.offset, error)
                await send_dead_letter(self._dlq, record, reason=error.reason, detail=str(error))
                continue
            latest[item.item_id] = (record, item)
            self._catalog.put_item(item)  # joinable now; the feed would add it a moment later
        if not latest:
            return
        items = [item for _, item in latest.values()]
        try:
            # Blocks for milliseconds per item: keep the event loop free meanwhile.
            vectors = await asyncio.to_thread(self._encoder.encode, [item_text(i) for i in items])
        except Exception as error:
            log.exception("embedding %s items failed; dead-lettering them", len(items))
            for record, _ in latest.values():
                await send_dead_letter(self._dlq, record, reason=INTERNAL_ERROR, detail=repr(error))
            return
        updated_at = now_ms()
        for item, vector in zip(items, vectors, strict=True):
            item_vector = events_pb2.ItemVector(
                item_id=item.item_id,
                model_version=self._catalog.model_version,
                vector=vector.tolist(),
                updated_at_ms=updated_at,
            )
            self._catalog.put_vector(item_vector)
            await self._item_vectors.send(
                key=item.item_id.encode(), value=item_vector.SerializeToString()
            )
        self.embedded += len(items)


def put_state(users: TableT, partition: int, user_id: str, state: UserState) -> None:
    """``users[user_id] = state`` with the changelog entry in `partition`, the partition of
    the user's events. (Assigning through the mapping takes the partition from the stream's
    current event, which a batch of events does not have.)"""
    key, value = user_id.encode(), encode_state(state)
    users.data[key] = value
    users.send_changelog(partition, key, value)


class EventsHandler:
    """Validates, dedupes and enriches batches of events; keeps user state in a table and
    in Redis; sends each record's outcome in its partition's transaction."""

    def __init__(
        self, *, catalog: Catalog, users: TableT, online: OnlineState,
        transactions: Transactions, enriched: str, dlq: str, policy: Policy,
        half_life_ms: float,
    ) -> None:
        self._catalog = catalog
        self._users = users
        self._online = online
        self._transactions = transactions
        self._enriched = enriched
        self._dlq = dlq
        self._policy = policy
        self._half_life_ms = half_life_ms
        self.accepted = 0
        self.rejected: Counter[str] = Counter()

    def _state_of(self, user_id: str) -> UserState:
        return decode_state(self._users.get(user_id.encode()))

    async def handle(self, events: Sequence[EventT]) -> None:
        batch = admit_batch(
            new_records(events, handled=self._transactions.handled),
            items=self._catalog.item, state_of=self._state_of, now_ms=now_ms(),
            policy=self._policy,
        )
        for user_id, (partition, state) in batch.changed.items():
            put_state(self._users, partition, user_id, state)
        accepted = [(r, o) for r, o in batch.outcomes if isinstance(o, Accepted)]
        outcomes = batch.outcomes
        try:
            # Redis first, then the event log: once enriched, serving already sees the event.
            # A record read again after a crash finds its effects applied and adds nothing.
            await self._online.write(
                [
                    Touch(o.event.user_id, o.event.item_id, o.event.timestamp_ms, o.weight,
                          r.partition, r.offset)
                    for r, o in accepted
                ],
                self._user_vectors({o.event.user_id: o.state for _, o in accepted}),
            )
        except Exception as error:
            log.exception("writing the online state of %s events failed", len(accepted))
            failed = Rejected(INTERNAL_ERROR, repr(error))
            outcomes = [(r, failed if isinstance(o, Accepted) else o) for r, o in outcomes]
            accepted = []
        transactions = self._transactions
        async with transactions.lock:
            for record, outcome in outcomes:
                if isinstance(outcome, Accepted):
                    enriched = enriched_event(record, outcome, now_ms=now_ms())
                    await transactions.send(
                        record.partition, self._enriched, outcome.event.user_id.encode(),
                        enriched.SerializeToString(),
                    )
                else:
                    log.debug("event %s[%s]@%s rejected: %s %s", record.topic,
                              record.partition, record.offset, outcome.reason, outcome.detail)
                    await transactions.send(
                        record.partition, self._dlq, record.key,
                        dead_letter_bytes(record, reason=outcome.reason, detail=outcome.detail),
                    )
                    self.rejected[outcome.reason] += 1
                transactions.processed(record.partition, record.offset)
            if transactions.due():
                await transactions.commit()
        self.accepted += len(accepted)

    def _user_vectors(self, states: dict[str, UserState]) -> list[UserVector]:
        """The new vector of each user with a history item that has a vector."""
        written_at = now_ms()
        vectors = []
        for user_id, state in states.items():
            vector = user_vector(
                state.history, self._catalog.vector, half_life_ms=self._half_life_ms
            )
            if vector is not None:
                newest = max(i.timestamp_ms for i in state.history)
                vectors.append(UserVector(
                    user_id, to_bytes(vector), self._catalog.model_version, newest, written_at
                ))
        return vectors
