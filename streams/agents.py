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
from streams.errors import RejectedInput
from streams.history import UserState, decode_state, encode_state
from streams.live import LiveModel, LoadedModel
from streams.metrics import StreamsMetrics
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
from streams.vectors import to_bytes

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
        self, *, catalog: Catalog, live: LiveModel, item_vectors: TopicT, dlq: TopicT,
        max_item_bytes: int, batch_size: int, metrics: StreamsMetrics,
    ) -> None:
        self._catalog = catalog
        self._live = live
        self._metrics = metrics
        self._batch_size = batch_size
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
            await self._embed(items)
        except Exception as error:
            log.exception("embedding %s items failed; dead-lettering them", len(items))
            for record, _ in latest.values():
                await send_dead_letter(self._dlq, record, reason=INTERNAL_ERROR, detail=repr(error))

    async def embed_missing(self) -> int:
        """Embed and publish the catalog items without a vector of the version in use."""
        missing = self._catalog.items_without_vector()
        for start in range(0, len(missing), self._batch_size):
            await self._embed(missing[start:start + self._batch_size])
        return len(missing)

    async def _embed(self, items: list[events_pb2.Item]) -> None:
        model = self._live.current  # the version the vectors are stamped with
        # Blocks for milliseconds per item: keep the event loop free meanwhile.
        started = time.perf_counter()
        vectors = await asyncio.to_thread(model.item_encoder.encode, [item_text(i) for i in items])
        self._metrics.encode_seconds.labels("item").observe(time.perf_counter() - started)
        updated_at = now_ms()
        for item, vector in zip(items, vectors, strict=True):
            item_vector = events_pb2.ItemVector(
                item_id=item.item_id,
                model_version=model.version,
                vector=vector.tolist(),
                updated_at_ms=updated_at,
            )
            self._catalog.put_vector(item_vector)
            await self._item_vectors.send(
                key=item.item_id.encode(), value=item_vector.SerializeToString()
            )
        self.embedded += len(items)
        self._metrics.items_embedded.inc(len(items))


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
        live: LiveModel, metrics: StreamsMetrics, highwater: Callable[[int], int | None],
    ) -> None:
        self._catalog = catalog
        self._users = users
        self._online = online
        self._transactions = transactions
        self._enriched = enriched
        self._dlq = dlq
        self._policy = policy
        self._live = live
        self._metrics = metrics
        self._highwater = highwater  # events partition -> offset after its newest record
        self.accepted = 0
        self.rejected: Counter[str] = Counter()

    def _state_of(self, user_id: str) -> UserState:
        return decode_state(self._users.get(user_id.encode()))

    async def handle(self, events: Sequence[EventT]) -> None:
        accepted, rejected = self.accepted, self.rejected.copy()
        async with self._live.lock:  # a model switch waits for the batch, and vice versa
            await self._handle(events)
        metrics = self._metrics
        metrics.events_in.inc(len(events))
        metrics.batch_size.observe(len(events))
        metrics.enriched.inc(self.accepted - accepted)
        for reason, count in (self.rejected - rejected).items():
            metrics.dead_lettered.labels(reason).inc(count)
        newest: dict[int, int] = {}
        for event in events:
            newest[event.message.partition] = max(event.message.offset,
                                                  newest.get(event.message.partition, -1))
        for partition, offset in newest.items():
            end = self._highwater(partition)
            if end is not None:
                metrics.lag.labels(str(partition)).set(max(end - offset - 1, 0))

    def _written(self, events: Sequence[EventT], outcomes: Sequence[tuple[Record, object]]) -> None:
        """Freshness of the accepted events whose online state was just written."""
        done = time.time()
        produced = {(e.message.partition, e.message.offset): e.message.timestamp for e in events}
        for record, outcome in outcomes:
            timestamp = produced.get((record.partition, record.offset))
            if isinstance(outcome, Accepted) and timestamp:
                self._metrics.freshness.observe(max(done - timestamp, 0.0))

    async def _handle(self, events: Sequence[EventT]) -> None:
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
                          o.event.type, r.partition, r.offset)
                    for r, o in accepted
                ],
                await self._user_vectors({o.event.user_id: o.state for _, o in accepted}),
            )
            self._written(events, outcomes)
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

    async def _user_vectors(self, states: dict[str, UserState]) -> list[UserVector]:
        """The new vector of each user with a history item that has a vector, all users of
        the batch in one encoder call."""
        if not states:
            return []
        model, vectors = self._live.current, self._catalog.vectors()
        histories = [state.history for state in states.values()]
        encode = model.user_encoder.encode
        started = time.perf_counter()
        if model.user_encoder.blocking:
            encoded = await asyncio.to_thread(encode, histories, vectors.get)
        else:
            encoded = encode(histories, vectors.get)
        self._metrics.encode_seconds.labels("user").observe(time.perf_counter() - started)
        self._metrics.user_vectors.inc(sum(vector is not None for vector in encoded))
        written_at = now_ms()
        return [
            UserVector(user_id, to_bytes(vector), model.version,
                       max(i.timestamp_ms for i in state.history), written_at)
            for (user_id, state), vector in zip(states.items(), encoded, strict=True)
            if vector is not None
        ]

    async def reembed(self, chunk: int = 256) -> int:
        """Write a vector of the version in use for every user in the table; chunks wait
        for the batch in progress, so a user's state is read as it is now. Events wait
        for a chunk in turn: one tower call over `chunk` users, tens of milliseconds."""
        user_ids = list(self._users.data.keys())
        written = 0
        for start in range(0, len(user_ids), chunk):
            async with self._live.lock:
                states = {key.decode(): self._state_of(key.decode())
                          for key in user_ids[start:start + chunk]}
                vectors = await self._user_vectors(
                    {user_id: state for user_id, state in states.items() if state.history}
                )
                await self._online.write([], vectors)
                written += len(vectors)
        return written


async def switch_model(
    model: LoadedModel, *, live: LiveModel, catalog: Catalog, items: ItemsHandler,
    events: EventsHandler, metrics: StreamsMetrics,
) -> None:
    """Use `model` from the next batch on: its item vectors, vectors for the catalog items
    it lacks (published), and a vector of it for every user of this worker's table."""
    async with live.lock:
        previous = live.version
        catalog.switch(model.version, model.dim, model.item_vectors)
        live.current = model
    metrics.use_model(model.version)
    embedded = await items.embed_missing()
    users = await events.reembed()
    log.info("switched from model %s to %s: %s items embedded, %s users re-embedded",
             previous, model.version, embedded, users)
