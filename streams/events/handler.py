"""One batch of events through its stages (:mod:`streams.events.stages`), and the users
embedded again between batches (a model switch, vectors that arrived, restored users).

Every record of a batch ends in exactly one of ``events.enriched`` or ``events.dlq``;
:meth:`EventsHandler.handle` returns those records, the changed user states and the new
dedupe-window ids, per partition of ``events``, for the partition's transaction
(:mod:`streams.events.partitions`). The handler's dependencies are the Protocols of
:mod:`streams.events.ports`: nothing here talks to Kafka.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import get_args

from contracts.deletions import BAD_CONTROL_RECORD, ControlRecordError, is_control, parse_control
from contracts.security import REDIS_ERRORS
from streams.deletion import relation_tombstones
from streams.events.ports import Clock, Consumed, DedupeWindows, Items, Models, OnlineStore, \
    UserStates
from streams.events.stages.admit import Accepted, Policy, admit_batch, remember_ids
from streams.events.stages.history import keep_states
from streams.events.stages.online import write_online
from streams.events.stages.outputs import outcome_records
from streams.events.stages.vectors import user_vectors
from streams.history import UserState
from streams.metrics import StreamsMetrics
from streams.online import UserVector
from streams.pending import PendingUsers, VectorMode
from streams.records import Output, Record, dead_letter, now_ms
from streams.towerprocess import TowerProcessError
from streams.waiting import UserKey, WaitingUsers, missing_items


log = logging.getLogger(__name__)


def merge(into: dict[int, list[Output]], more: Mapping[int, list[Output]]) -> None:
    """Append `more`'s records to `into`'s, partition by partition."""
    for partition, records in more.items():
        into.setdefault(partition, []).extend(records)


class EventsHandler:
    """Validates, dedupes and enriches batches of events; keeps user state in the user
    store and in Redis, accepted event ids in the dedupe windows. The caller holds
    ``live.lock``. ``waiting`` holds the users whose vector lacks items that have no
    vector yet, ``pending`` those whose vector is deferred (`vector_mode`)."""

    def __init__(
        self, *, catalog: Items, users: UserStates, seen: DedupeWindows, online: OnlineStore,
        enriched: str, dlq: str, relations: str, policy: Policy, live: Models,
        metrics: StreamsMetrics, waiting: WaitingUsers, clock: Clock = now_ms,
        vector_mode: VectorMode = "auto",
    ) -> None:
        if vector_mode not in get_args(VectorMode):
            raise ValueError(f"vector_mode must be one of {get_args(VectorMode)}, "
                             f"not {vector_mode!r}")
        self._catalog = catalog
        self._users = users
        self._seen = seen
        self._online = online
        self._enriched = enriched
        self._dlq = dlq
        self._relations = relations
        self._policy = policy
        self._live = live
        self._metrics = metrics
        self._clock = clock
        self.waiting = waiting
        self.vector_mode = vector_mode
        self.pending = PendingUsers()
        # Users deleted while a deferred pass was encoding: it must not write their vector.
        self._deleted: set[UserKey] | None = None
        # Waiting for nothing, but is their vector there, and as new as their state (the
        # newest event's time)?
        self._restored: dict[UserKey, int] = {}
        self._lost: set[UserKey] = set()  # vectors a Redis failover may have set back
        # Partition -> newest offset of a deletion receipt in Redis, until it commits past it.
        self._receipts: dict[int, int] = {}
        self.accepted = 0
        self.rejected: Counter[str] = Counter()

    async def handle(self, consumed: Sequence[Consumed]) -> dict[int, list[Output]]:
        """Handle records not handled before, each partition's in offset order; returns
        the records to send in each partition's transaction. A deletion's control record
        splits the batch: the events before it are applied first (and so deleted with
        the user), those after it start a new user."""
        outputs: dict[int, list[Output]] = {}
        for control, part in itertools.groupby(consumed, key=lambda r: is_control(r.headers)):
            if control:
                for record in part:
                    merge(outputs, await self._delete(record))
            else:
                merge(outputs, await self._handle_events(list(part)))
        return outputs

    async def _handle_events(self, consumed: Sequence[Consumed]) -> dict[int, list[Output]]:
        records = [Record(r.topic, r.partition, r.offset, r.key, r.value) for r in consumed]
        # An accepted record's key is its user id (admission checks it), and a key's
        # records share a partition: the partition whose store holds the user's state.
        partition_of = {r.key.decode(errors="replace"): r.partition for r in records if r.key}
        users = self._users

        def state_of(user_id: str) -> UserState:
            partition = partition_of.get(user_id)
            return users.get(partition, user_id) if partition is not None else UserState()

        # validate + admit (the dedupe window's ids looked up for the whole batch)
        batch = admit_batch(records, items=self._catalog.item, state_of=state_of,
                            now_ms=self._clock(), policy=self._policy, seen=self._seen.of)
        # history: the changed user states, kept and changelogged
        states = keep_states(batch.changed, users)

        # user vectors + online writes: Redis first, then the event log
        async def vectors(changed: dict[str, UserState]) -> list[UserVector]:
            if self.defers():
                self.pending.note((partition_of[user_id], user_id) for user_id in changed)
                return []
            return await self._user_vectors(changed, partition_of)

        outcomes = await write_online(batch.outcomes, [r.timestamp for r in consumed],
                                      online=self._online, user_vectors=vectors,
                                      metrics=self._metrics, clock=self._clock)
        # outputs: enriched events and dead letters, then the states and the new ids
        outputs = outcome_records(outcomes, enriched=self._enriched, dlq=self._dlq,
                                  now_ms=self._clock())
        merge(outputs, states)
        accepted = sum(isinstance(outcome, Accepted) for _, outcome in outcomes)
        if accepted:  # the ids of events whose online state was written
            merge(outputs, remember_ids(batch.seen, self._seen))
        rejected = Counter(o.reason for _, o in outcomes if not isinstance(o, Accepted))
        self.accepted += accepted
        self.rejected.update(rejected)
        self._metrics.enriched.inc(accepted)
        for reason, count in rejected.items():
            self._metrics.dead_lettered.labels(reason).inc(count)
        return outputs

    async def _delete(self, consumed: Consumed) -> dict[int, list[Output]]:
        """Carry out a deletion's control record: Redis once (streams.deletion), the user's
        state dropped, its changelog tombstone and the user's relation tombstones for the
        partition's transaction. A malformed one is dead-lettered with its reason."""
        partition = consumed.partition
        try:
            deletion = parse_control(consumed.key, consumed.value, consumed.headers)
        except ControlRecordError as error:
            record = Record(consumed.topic, partition, consumed.offset, consumed.key, consumed.value)
            letter = dead_letter(record, reason=BAD_CONTROL_RECORD, detail=str(error),
                                 now_ms=self._clock())
            self.rejected[BAD_CONTROL_RECORD] += 1
            self._metrics.dead_lettered.labels(BAD_CONTROL_RECORD).inc()
            log.warning("control record %s[%s]@%s dead-lettered: %s", consumed.topic, partition,
                        consumed.offset, error)
            return {partition: [(self._dlq, None, consumed.key, letter.SerializeToString())]}
        user_id = deletion.user_id
        removed = await self._online.delete_user(user_id, partition=partition,
                                                 offset=consumed.offset)
        self._receipts[partition] = consumed.offset
        held = self._users.delete(partition, user_id)
        self.waiting.forget((partition, user_id))
        self.pending.forget((partition, user_id))
        if self._deleted is not None:
            self._deleted.add((partition, user_id))
        self._restored.pop((partition, user_id), None)
        outputs: list[Output] = [(self._users.topic, partition, user_id.encode("utf-8"), None)]
        outputs += relation_tombstones(user_id, removed, self._relations)
        self._metrics.deletions.inc()
        self._metrics.deleted_edges.inc(removed.edges)
        log.info("user %s deleted: %s, %s edges tombstoned%s", user_id,
                 "state dropped" if held else "no state held", removed.edges,
                 "" if removed.now else " (online state removed before a restart)")
        return {partition: outputs}

    async def committed(self, offsets: Mapping[int, int], *, always: bool = False) -> None:
        """Partitions committed up to `offsets` (partition -> next offset): the deletion
        receipts below them are dropped (`always`: whether or not this worker wrote any,
        at an assignment). A Redis failure leaves them for the next commit."""
        done = [p for p, offset in self._receipts.items() if offsets.get(p, -1) > offset]
        if not (done or always) or not offsets:
            return
        try:
            await self._online.forget_receipts(offsets)
        except REDIS_ERRORS as error:
            log.warning("dropping deletion receipts failed (%s); trying at the next commit",
                        error)
            return
        for partition in done:
            self._receipts.pop(partition, None)

    def defers(self) -> bool:
        """Whether batches leave their user vectors to :meth:`embed_pending`."""
        return self.vector_mode == "deferred" or (
            self.vector_mode == "auto" and self._live.current.user_encoder.heavy)

    async def _user_vectors(self, states: dict[str, UserState],
                            partition_of: Mapping[str, int]) -> list[UserVector]:
        return await user_vectors(states, partition_of, model=self._live.current,
                                  vectors=self._catalog.vectors(), waiting=self.waiting,
                                  metrics=self._metrics, clock=self._clock)

    async def embed_pending(self, *, most: int, within_s: float = 0.0) -> int:
        """One pass of the deferred vectors: the `most` users noted first (waits for
        one), their states read as they are now, one encoder call (on the event loop,
        :func:`user_vectors`) without ``live.lock``, then one write. A user who acted again meanwhile is noted
        again and gets the newer vector in the next pass; one deleted, or whose
        partition went elsewhere, meanwhile gets none; a pass that a model switch
        overtook writes nothing (the switch embeds every user again). Returns the
        vectors written."""
        taken = await self.pending.take(most, within_s=within_s)
        async with self._live.lock:
            model, vectors = self._live.current, self._catalog.vectors()
            partition_of = {user_id: partition for partition, user_id in taken}
            states = {user_id: state for partition, user_id in taken
                      if (state := self._users.get(partition, user_id)).history}
            self._deleted = set()
        try:
            made = await user_vectors(states, partition_of, model=model, vectors=vectors,
                                      waiting=self.waiting, metrics=self._metrics,
                                      clock=self._clock)
        except TowerProcessError as error:  # the next pass starts another process
            self._deleted = None
            log.warning("embedding %s users failed (%s); they wait for the next pass",
                        len(states), error)
            self.pending.note(taken)
            return 0
        except Exception:
            self._deleted = None
            log.exception("embedding %s users failed; they keep their previous vector",
                          len(states))
            return 0
        async with self._live.lock:
            deleted, self._deleted = self._deleted or set(), None
            if self._live.current is not model:
                return 0
            kept = [vector for vector in made
                    if (key := (partition_of[vector.user_id], vector.user_id)) not in deleted
                    and self._users.holds(*key)]
            await self._online.write([], kept)
        done = time.monotonic()
        for noted in taken.values():
            self._metrics.vector_deferral.observe(done - noted)
        return len(kept)

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
                    self._restored[(partition, user_id)] = max(i.timestamp_ms for i in history)

    def note_lost_vectors(self, users: Iterable[UserKey]) -> None:
        """`users` may have an older vector in Redis than their state (writes lost with a
        failed master): :meth:`embed_waiting` embeds them again."""
        self._lost.update(users)

    async def embed_waiting(self) -> int:
        """Embed again, between batches, the users waiting for the items that got vectors
        since the last call (every user of the store if the waiting set overflowed), the
        restored users without a vector of the version in use or with one older than
        their state, and the users whose vector a Redis failover set back."""
        users: set[UserKey] = set()
        if self._restored:
            restored, self._restored = self._restored, {}
            try:
                marks = await self._online.vector_marks([u for _, u in restored])
            except REDIS_ERRORS as error:
                log.warning("reading the vectors of %s restored users failed (%s); "
                            "trying again", len(restored), error)
                self._restored.update(restored)
            else:
                # Stale too: a vector older than the state (a deferred one the previous
                # owner had not written yet when it stopped).
                version = self._live.version
                users.update(user for (user, newest), mark in zip(restored.items(), marks,
                                                                   strict=True)
                             if mark is None or mark[0] != version or mark[1] < newest)
        if self._lost:
            users |= self._lost  # a user whose partition went elsewhere has no history here
            self._lost = set()
        arrived = self._catalog.take_arrived()
        if arrived and self.waiting.overflowed:
            log.warning("more than %s users wait for item vectors: re-embedding all %s",
                        self.waiting.max_users, len(self._users))
            self.waiting.clear()
            return await self.reembed()
        users |= self.waiting.take(arrived)
        return await self.reembed(users) if users else 0
