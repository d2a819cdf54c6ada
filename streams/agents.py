"""The record handlers of items and events: decode, call the pure functions, send, write
Redis.

Every record of ``events`` ends in exactly one of ``events.enriched`` or ``events.dlq``,
sent in the Kafka transaction that commits the record's offset (``streams.delivery``),
together with the user states it changed; a bad record of ``items`` goes to
``events.dlq`` too (``origin_topic`` tells them apart), at least once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence

from aiokafka import ConsumerRecord
from faust.types import EventT, TopicT
from faust.types.tuples import Message
from redis.exceptions import RedisError

from contracts.online import encode_vector as to_bytes
from protos import events_pb2
from streams.catalog import Catalog
from streams.delivery import Output, Transactions
from streams.errors import RejectedInput
from streams.history import UserState
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
from streams.seenstore import SeenStore
from contracts.itemtext import item_text
from streams.userstore import UserStore
from streams.validation import parse_item
from streams.waiting import UserKey, WaitingUsers, missing_items

log = logging.getLogger(__name__)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def to_record(message: Message) -> Record:
    return Record(message.topic, message.partition, message.offset, message.key, message.value)


def dead_letter_bytes(record: Record, *, reason: str, detail: str) -> bytes:
    return dead_letter(record, reason=reason, detail=detail, now_ms=now_ms()).SerializeToString()


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


class EventsHandler:
    """Validates, dedupes and enriches batches of events; keeps user state in the user
    store and in Redis, accepted event ids in the dedupe windows; sends each record's
    outcome, the changed user states and the new ids in its partition's transaction.
    The caller holds ``live.lock``. ``waiting`` holds the users whose vector lacks
    items that have no vector yet."""

    def __init__(
        self, *, catalog: Catalog, users: UserStore, seen: SeenStore, online: OnlineState,
        transactions: Transactions, enriched: str, dlq: str, policy: Policy,
        live: LiveModel, metrics: StreamsMetrics, waiting: WaitingUsers,
    ) -> None:
        self._catalog = catalog
        self._users = users
        self._seen = seen
        self._online = online
        self._transactions = transactions
        self._enriched = enriched
        self._dlq = dlq
        self._policy = policy
        self._live = live
        self._metrics = metrics
        self.waiting = waiting
        self._restored: list[UserKey] = []  # waiting for nothing, but is their vector there?
        self.accepted = 0
        self.rejected: Counter[str] = Counter()

    async def handle(self, records: Sequence[ConsumerRecord]) -> None:
        """Handle records of owned partitions, each partition's in offset order."""
        accepted, rejected = self.accepted, self.rejected.copy()
        await self._handle(records)
        metrics = self._metrics
        metrics.events_in.inc(len(records))
        metrics.batch_size.observe(len(records))
        metrics.enriched.inc(self.accepted - accepted)
        for reason, count in (self.rejected - rejected).items():
            metrics.dead_lettered.labels(reason).inc(count)

    def _written(self, outcomes: Sequence[tuple[Record, Accepted | Rejected]],
                 produced: Sequence[int]) -> None:
        """Freshness of the accepted events whose online state was just written;
        `produced` holds the records' timestamps, in the order of `outcomes`."""
        done = now_ms()
        observe = self._metrics.freshness.observe
        for (_, outcome), timestamp in zip(outcomes, produced, strict=True):
            if timestamp and isinstance(outcome, Accepted):
                observe(max(done - timestamp, 0) / 1000.0)

    async def _handle(self, consumed: Sequence[ConsumerRecord]) -> None:
        handled = self._transactions.handled
        fresh = [r for r in consumed if not handled(r.partition, r.offset)]
        records = [Record(r.topic, r.partition, r.offset, r.key, r.value) for r in fresh]
        # An accepted record's key is its user id (admission checks it), and a key's
        # records share a partition: the partition whose store holds the user's state.
        partition_of = {r.key.decode(errors="replace"): r.partition for r in records if r.key}
        users = self._users

        def state_of(user_id: str) -> UserState:
            partition = partition_of.get(user_id)
            return users.get(partition, user_id) if partition is not None else UserState()

        batch = admit_batch(records, items=self._catalog.item, state_of=state_of,
                            now_ms=now_ms(), policy=self._policy, seen=self._seen.of)
        states: dict[int, list[tuple[str, bytes]]] = {}
        for user_id, (partition, state) in batch.changed.items():
            states.setdefault(partition, []).append(
                (user_id, self._users.put(partition, user_id, state))
            )
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
                await self._user_vectors({o.event.user_id: o.state for _, o in accepted},
                                         partition_of),
            )
            self._written(outcomes, [r.timestamp for r in fresh])
        except Exception as error:
            log.exception("writing the online state of %s events failed", len(accepted))
            failed = Rejected(INTERNAL_ERROR, repr(error))
            outcomes = [(r, failed if isinstance(o, Accepted) else o) for r, o in outcomes]
            accepted = []
        by_partition: dict[int, list[Output]] = {}
        processed_at = now_ms()
        for record, outcome in outcomes:
            outputs = by_partition.setdefault(record.partition, [])
            if isinstance(outcome, Accepted):
                enriched = enriched_event(record, outcome, now_ms=processed_at)
                outputs.append((self._enriched, None, outcome.event.user_id.encode(),
                                enriched.SerializeToString()))
            else:
                log.debug("event %s[%s]@%s rejected: %s %s", record.topic, record.partition,
                          record.offset, outcome.reason, outcome.detail)
                outputs.append((self._dlq, None, record.key, dead_letter_bytes(
                    record, reason=outcome.reason, detail=outcome.detail)))
                self.rejected[outcome.reason] += 1
        changelog = self._users.topic
        for partition, changed in states.items():
            by_partition.setdefault(partition, []).extend(
                (changelog, partition, user_id.encode(), value) for user_id, value in changed
            )
        if accepted:  # the ids of events whose online state was written
            seen = self._seen
            for partition, (hashes, times) in batch.seen.items():
                by_partition.setdefault(partition, []).extend(
                    (seen.topic, partition, key, value)
                    for key, value in seen.add(partition, hashes, times)
                )
        transactions = self._transactions
        newest: dict[int, int] = {}
        for record in records:
            newest[record.partition] = max(newest.get(record.partition, -1), record.offset)
        # Commits are the transactions' own task (every commit_interval_s): the next batch
        # reads, judges and writes Redis while one is on its way, and waits for it only
        # to send its outputs.
        async with transactions.lock:
            for partition, outputs in by_partition.items():
                await transactions.send_many(partition, outputs)
            for partition, offset in newest.items():
                transactions.processed(partition, offset)
        self.accepted += len(accepted)

    async def _user_vectors(self, states: dict[str, UserState],
                            partition_of: Mapping[str, int]) -> list[UserVector]:
        """The new vector of each user with a history item that has a vector, all users of
        the batch in one encoder call. Users are noted as waiting for the items without
        a vector before the call: one that gets its vector meanwhile finds them."""
        if not states:
            return []
        model, vectors = self._live.current, self._catalog.vectors()
        for user_id, state in states.items():
            self.waiting.note((partition_of[user_id], user_id),
                              missing_items(state.history, vectors))
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

    async def reembed(self, users: Collection[UserKey] | None = None, chunk: int = 256) -> int:
        """Write a vector of the version in use for `users` (default: every user in the
        store); chunks wait for the batch in progress, so a user's state is read as it is
        now. Events wait for a chunk in turn: one tower call over `chunk` users, tens of
        milliseconds."""
        keys = list(self._users.users() if users is None else users)
        written = 0
        for start in range(0, len(keys), chunk):
            async with self._live.lock:
                part = keys[start:start + chunk]
                states = {user_id: self._users.get(partition, user_id)
                          for partition, user_id in part}
                vectors = await self._user_vectors(
                    {user_id: state for user_id, state in states.items() if state.history},
                    {user_id: partition for partition, user_id in part},
                )
                await self._online.write([], vectors)
                written += len(vectors)
        return written

    def note_waiting(self, partitions: Iterable[int]) -> None:
        """Rebuild the waiting users of newly assigned partitions from their restored
        states (the caller holds ``live.lock``). The others have every item's vector,
        which may have come while no worker held the partition: :meth:`embed_waiting`
        looks at their vectors."""
        wanted, vectors = set(partitions), self._catalog.vectors()
        for partition, user_id in self._users.users():
            if partition in wanted:
                history = self._users.get(partition, user_id).history
                missing = missing_items(history, vectors)
                self.waiting.note((partition, user_id), missing)
                if history and not missing:
                    self._restored.append((partition, user_id))

    async def embed_waiting(self) -> int:
        """Embed again, between batches, the users waiting for the items that got vectors
        since the last call (every user of the store if the waiting set overflowed), and
        the restored users without a vector of the version in use."""
        users: set[UserKey] = set()
        if self._restored:
            restored, self._restored = self._restored, []
            try:
                versions = await self._online.vector_versions([u for _, u in restored])
            except RedisError as error:
                log.warning("reading the vectors of %s restored users failed (%s); "
                            "trying again", len(restored), error)
                self._restored += restored
            else:
                version = self._live.version
                users.update(u for u, found in zip(restored, versions, strict=True)
                             if found != version)
        arrived = self._catalog.take_arrived()
        if arrived and self.waiting.overflowed:
            log.warning("more than %s users wait for item vectors: re-embedding all %s",
                        self.waiting.max_users, len(self._users))
            self.waiting.clear()
            return await self.reembed()
        users |= self.waiting.take(arrived)
        return await self.reembed(users) if users else 0


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
        events.waiting.clear()  # re-embedding every user below notes them for this version
    metrics.use_model(model.version)
    embedded = await items.embed_missing()
    users = await events.reembed()
    log.info("switched from model %s to %s: %s items embedded, %s users re-embedded",
             previous, model.version, embedded, users)
