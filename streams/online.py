"""The online state serving reads, written to Redis (keys and formats: ``contracts.online``).

One pipelined transaction per batch of accepted events; a Redis failure is logged and
retried with exponential backoff until it succeeds (redis-py's ``Retry`` with
:class:`WriteBackoff`), so no event is lost (the batch waits).
Commands are grouped per user and per item, so a batch costs a few commands per distinct
user rather than per event.

Effects are applied once per event although a crash or a rebalance makes the worker read
records again: the transaction also records, per partition of the events topic, the
newest offset whose effects it holds (``applied``), and a record at or below that offset
adds nothing. The check and the write are one optimistic transaction (``WATCH``), so a
worker that lost a partition and still writes cannot apply what the new owner applied.

On a Redis Cluster (a ``RedisCluster`` client) no transaction spans the slots of a
batch's users: each slot's share is applied by one script fenced by that slot's own
applied offsets instead (:mod:`streams.slots`), with the same once-per-record outcome.
The social graph's writes (edges, the fan-out into followers' feeds, a deletion's edges)
read what they need first and are split by slot the same way (:mod:`streams.clustergraph`).

A user's keys carry a time to live (``user_ttl_s``) that each batch in which they act
starts again, so the state of users who stopped coming leaves Redis on its own.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeVar

from mode import Service
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, WatchError

from contracts.online import (
    NEWEST_FIELD,
    VECTOR_FIELD,
    VERSION_FIELD,
    WRITTEN_AT_FIELD,
    RedisKeys,
    slot_of,
)
from contracts.security import REDIS_ERRORS
from protos import events_pb2
from streams.fanout import FANOUT_SCRIPT, Fanout, FanoutCounts, SocialAct, fanout_args, \
    fanout_counts, feed_entries
from streams.graph import GRAPH_SCRIPT, EdgeChange, HotChanges, graph_args, hot_changes
from streams.deletion import DELETE_USER_SCRIPT, Removed, deletion_args, obsolete_fields, parse_reply
from streams.slots import Call, Share, SlotWriter, parse_offsets
from streams import clustergraph
from streams.trending import SCRIPT, Window, flat_pairs, increments, script_args

# KEYS: the popular zset. ARGV: a JSON list of item id and amount pairs, flat. One command
# with one argument for a batch's items, where a ZINCRBY each would cost the client a
# command per item.
POPULAR_SCRIPT = """
local pairs = cjson.decode(ARGV[1])
for i = 1, #pairs, 2 do
  redis.call('ZINCRBY', KEYS[1], string.format('%.17g', pairs[i + 1]), pairs[i])
end
return #pairs / 2
"""

# KEYS: per-user sorted sets (seen, acts). ARGV[1]: a JSON list aligned with KEYS, each
# ``[cap, item, ts, item, ts, ...]``: ZADD GT of the pairs (an item keeps its newest
# time), then the set trimmed to its newest ``cap``. One argument for the whole batch.
TOUCH_SCRIPT = """
local data = cjson.decode(ARGV[1])
for k = 1, #KEYS do
  local entry = data[k]
  local args = {}
  for i = 2, #entry, 2 do
    args[#args + 1] = string.format('%.17g', entry[i + 1])
    args[#args + 1] = entry[i]
    if #args >= 1000 then
      redis.call('ZADD', KEYS[k], 'GT', unpack(args))
      args = {}
    end
  end
  if #args > 0 then
    redis.call('ZADD', KEYS[k], 'GT', unpack(args))
  end
  redis.call('ZREMRANGEBYRANK', KEYS[k], 0, -(entry[1] + 1))
end
return #KEYS
"""

# KEYS: the per-user keys of a batch. ARGV[1]: seconds; ARGV[2]: how many of KEYS, from
# the first, belong to users who acted (their time to live starts again); the rest are
# vectors written without an act (a release's re-embedding), which get one only if they
# have none, so re-embedding does not keep an inactive user. A missing key is left alone.
EXPIRE_SCRIPT = """
local seconds, acted = ARGV[1], tonumber(ARGV[2])
for k = 1, #KEYS do
  if k <= acted then
    redis.call('EXPIRE', KEYS[k], seconds)
  else
    redis.call('EXPIRE', KEYS[k], seconds, 'NX')
  end
end
return #KEYS
"""

log = logging.getLogger(__name__)

# How far before a lost record's first write a read-back of the log starts (clock skew
# between this host and the brokers, whose log append time a topic may keep).
RECOVERY_MARGIN_MS = 60_000


class Recovery(Protocol):
    """Reads back the records whose effects a failed master lost
    (:class:`streams.recovery.EnrichedLog`): partition -> (first, newest) offset lost;
    `since_ms` bounds the log time of the first (0: unknown). ``touches``: the accepted
    events'; ``deletions``: the users' deletions (control records) among them."""

    async def touches(self, lost: Mapping[int, tuple[int, int]], *,
                      since_ms: int) -> list[Touch]: ...

    async def deletions(self, lost: Mapping[int, tuple[int, int]]) -> list[Deletion]: ...


class RelationsRecovery(Protocol):
    """Reads back the edge changes of lost ``relations`` offsets (partition -> first,
    newest), as they were decided the first time (streams.relations.RelationsLog)."""

    async def changes(self, lost: Mapping[int, tuple[int, int]]) -> list[EdgeChange]: ...


class Touch(NamedTuple):
    """An accepted event: the user acted on the item (``event_type``, an ``EventType``
    number); ``popularity`` is added to its popular and trending scores (0 adds nothing).
    ``partition`` and ``offset`` locate its record in the events topic."""

    user_id: str
    item_id: str
    timestamp_ms: int
    popularity: float
    event_type: int
    partition: int
    offset: int


class Deletion(NamedTuple):
    """A user's deletion: its control record's place in the events topic."""

    user_id: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Caps:
    """Lengths of the per-user sorted sets and of the trending sets."""

    seen: int
    acts: int
    purchases: int
    trending: int

    def acts_of(self, event_type: int) -> int:
        return self.purchases if event_type == events_pb2.PURCHASE else self.acts


@dataclass
class UserTouches:
    """One user's touches of a batch: newest time per item, overall and per event type."""

    seen: dict[str, int]
    acts: dict[int, dict[str, int]]


def group_touches(touches: Sequence[Touch]) -> dict[str, UserTouches]:
    """Touches by user, keeping the newest time of each item (what ``ZADD GT`` keeps)."""
    users: dict[str, UserTouches] = {}
    for touch in touches:
        user = users.get(touch.user_id)
        if user is None:
            user = users[touch.user_id] = UserTouches({}, {})
        ts = touch.timestamp_ms
        if user.seen.get(touch.item_id, ts) <= ts:
            user.seen[touch.item_id] = ts
        by_type = user.acts.setdefault(touch.event_type, {})
        if by_type.get(touch.item_id, ts) <= ts:
            by_type[touch.item_id] = ts
    return users


def popularity_sums(touches: Sequence[Touch]) -> dict[str, float]:
    """Item -> sum of the batch's positive popularity."""
    sums: dict[str, float] = {}
    for touch in touches:
        if touch.popularity:
            sums[touch.item_id] = sums.get(touch.item_id, 0.0) + touch.popularity
    return sums


def flat_entry(cap: int, times: dict[str, int]) -> list[object]:
    """``[cap, item, ts, item, ts, ...]``: one sorted set's part of :data:`TOUCH_SCRIPT`."""
    entry: list[object] = [cap]
    for item, ts in times.items():
        entry += (item, ts)
    return entry


class UserVector(NamedTuple):
    """A user's new vector (``contracts.online.encode_vector`` bytes) and what it was made from."""

    user_id: str
    vector: bytes
    version: str
    newest_ms: int
    written_at_ms: int


class Located(Protocol):
    """Something made from one record: where the record is in its topic."""

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


L = TypeVar("L", bound=Located)
R = TypeVar("R")


def above_applied(records: Sequence[L], applied: Mapping[int, int]
                  ) -> tuple[list[L], dict[int, int]]:
    """The records above their partition's applied offset, and the new applied offset of
    each partition they come from."""
    fresh = [r for r in records if r.offset > applied.get(r.partition, -1)]
    newest: dict[int, int] = {}
    for record in fresh:
        newest[record.partition] = max(newest.get(record.partition, -1), record.offset)
    return fresh, newest


def unapplied(
    touches: Sequence[Touch], vectors: Sequence[UserVector], applied: dict[int, int]
) -> tuple[list[Touch], list[UserVector], dict[int, int]]:
    """The touches above their partition's applied offset, the vectors of their users, and
    the new applied offset of each partition they come from."""
    fresh, newest = above_applied(touches, applied)
    users = {t.user_id for t in fresh}
    return fresh, [v for v in vectors if v.user_id in users], newest


def user_keys(keys: RedisKeys, user_id: str) -> list[str]:
    """Every key of a user's online state that expires with their inactivity: the vector,
    ``seen``, each type's ``acts`` (also those the batch did not touch: an item bought
    long ago stays excluded while the user is active) and the social feed. Their graph
    (``following``, ``followers``) is not among them: edges stay until removed."""
    return [keys.user_vector(user_id), keys.seen(user_id),
            *(pattern.of(user_id) for pattern in keys.acts_sets.values()),
            keys.social(user_id)]


def deleted_keys(keys: RedisKeys, user_id: str) -> list[str]:
    """The keys a deletion removes on a cluster (no social graph there): the user's
    online state and their (empty) graph sets."""
    return [*user_keys(keys, user_id), keys.following(user_id), keys.followers(user_id)]


def expiring_keys(keys: RedisKeys, touches: Sequence[Touch], vectors: Sequence[UserVector]
                  ) -> tuple[list[str], int]:
    """The keys of :data:`EXPIRE_SCRIPT` and how many of them, from the first, are of
    users who acted in the batch."""
    acted = list(dict.fromkeys(t.user_id for t in touches))
    names = [name for user_id in acted for name in user_keys(keys, user_id)]
    refreshed = len(names)
    known = set(acted)
    names += [keys.user_vector(v.user_id) for v in vectors if v.user_id not in known]
    return names, refreshed


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class WriteBackoff(ExponentialBackoff):
    """Waits of `initial_s`, doubling after each failure up to `max_s`, for as many failures
    as come. (:class:`ExponentialBackoff` computes ``base * 2**failures`` and overflows a
    float after ~1,000 failures: about 1.5 h of outage at a 5 s cap.)"""

    def __init__(self, initial_s: float, max_s: float) -> None:
        super().__init__(cap=max_s, base=initial_s / 2)  # failure 1 waits base * 2
        self._doublings = 1 + max(0, math.ceil(math.log2(max_s / initial_s)))

    def compute(self, failures: int) -> float:
        return super().compute(min(failures, self._doublings))


class AppliedOffsets:
    """The applied offsets of one source topic's partitions in the hash ``key``: field
    ``{topic}:{partition}``, value the newest offset whose effects Redis holds."""

    def __init__(self, key: str, topic: str, group: str = "") -> None:
        self.key = key
        self.topic = topic
        self.group = group  # the consumer group (names its slots' fences on a cluster)

    def parse(self, fields: Mapping[bytes | str, bytes | str]) -> dict[int, int]:
        return parse_offsets(fields, self.topic)

    async def watch(self, pipe: Pipeline) -> dict[int, int]:
        """Watch the hash (a transaction fails if another writer moves it) and read it."""
        await pipe.watch(self.key)
        return self.parse(await pipe.hgetall(self.key))

    def move(self, pipe: Pipeline, newest: Mapping[int, int]) -> None:
        """Queue the new applied offsets in the open transaction."""
        pipe.hset(self.key, mapping={f"{self.topic}:{p}": offset for p, offset in newest.items()})


class OnlineState(Service):
    """Writes batches of :class:`Touch` and :class:`UserVector`, and of the social graph's
    :class:`EdgeChange`; owns the Redis client. ``group`` (the consumer group) and
    ``source_topic`` (the events topic) name the events' applied offsets. With `fanout`,
    a batch's acts are also written into their actors' followers' feeds. With
    ``user_ttl_s``, a user's keys (:func:`user_keys`) expire that long after the last batch
    in which they acted (0: never). On a cluster, a `recovery` reads back from the log
    what a failed master lost (:meth:`_write_slots`)."""

    def __init__(
        self,
        client: Redis,
        *,
        keys: RedisKeys,
        caps: Caps,
        trending: Sequence[Window],
        group: str,
        source_topic: str,
        retry_initial_s: float,
        retry_max_s: float,
        user_ttl_s: int = 0,
        fanout: Fanout | None = None,
        on_fanout: Callable[[FanoutCounts], None] | None = None,
        recovery: Recovery | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._client = client
        self.keys = keys
        self._caps = caps
        self._windows = list(trending)
        self._trending = client.register_script(SCRIPT)
        self._popular = client.register_script(POPULAR_SCRIPT)
        self._touch = client.register_script(TOUCH_SCRIPT)
        self._expire = client.register_script(EXPIRE_SCRIPT)
        self._user_ttl_s = user_ttl_s  # 0: a user's keys never expire
        self._fanout_script = client.register_script(FANOUT_SCRIPT)
        self._graph = client.register_script(GRAPH_SCRIPT)
        self._fanout = fanout
        self._on_fanout = on_fanout
        self._applied = AppliedOffsets(keys.applied(group), source_topic)
        self._delete = client.register_script(DELETE_USER_SCRIPT)
        self._scripts = {"touch": self._touch, "popular": self._popular,
                         "trending": self._trending, "expire": self._expire}
        # On a cluster: each slot's share of a batch, fenced in that slot.
        self._slots: SlotWriter | None = None
        self._functions = {"touch": TOUCH_SCRIPT, "popular": POPULAR_SCRIPT,
                           "trending": SCRIPT, "expire": EXPIRE_SCRIPT,
                           **clustergraph.FUNCTIONS}
        if isinstance(client, RedisCluster):
            self._slots = SlotWriter(
                client, topic=source_topic, fence_key=lambda slot: keys.fence(group, slot),
                functions=self._functions)
        # on a cluster: the relations reader's writer (its own group's fences)
        self._relation_slots: SlotWriter | None = None
        # on a cluster: the receipts this writer keeps, (partition, offset, key)
        self._receipts: list[tuple[int, int, str]] = []
        self._group = group
        self._source_topic = source_topic
        self._recovery = recovery
        # Set by the app: delivers the outputs already sent, before a read-back of the
        # log; and takes the users whose vector a failover may have set back (partition,
        # user id), to embed them again.
        self.before_read_back: Callable[[], Awaitable[None]] | None = None
        self.on_lost_vectors: Callable[[list[tuple[int, str]]], None] | None = None
        self.recovered = 0  # touches read back and applied again after a failover
        # The retry wraps a whole write, not the client: a write is an optimistic
        # transaction (WATCH, read the applied offsets, MULTI/EXEC) that must start over
        # on a new connection, which redis-py's client retry does not do for a watching
        # pipeline (it raises); and a retry without end on the client would also hold the
        # start-up ping and vector_marks, whose callers handle the error themselves.
        # Every Redis error, without end: a partition waits for Redis, it never skips.
        self._backoff = WriteBackoff(retry_initial_s, retry_max_s)
        # (RedisClusterException is no RedisError, which is all Retry's hint names.)
        self._retry = Retry(self._backoff, retries=-1,
                            supported_errors=REDIS_ERRORS)  # type: ignore[arg-type]

    async def on_start(self) -> None:
        try:
            await self._client.ping()
        except REDIS_ERRORS as error:
            log.warning("redis is not reachable yet (%s); writes will retry", error)

    async def on_shutdown(self) -> None:
        await self._client.aclose()

    async def write(self, touches: Sequence[Touch], vectors: Sequence[UserVector]) -> int:
        """Apply a batch, retrying on any Redis error until it is applied; returns how many
        touches were new (the others had been applied before). Vectors without touches
        (users re-embedded after a release) are written as they are."""
        if not touches and not vectors:
            return 0
        once = self._write_once if self._slots is None else self._write_slots
        return await self._retrying(lambda: once(touches, vectors), f"{len(touches)} events")

    async def write_relations(self, changes: Sequence[EdgeChange], *, applied: AppliedOffsets,
                              fanout_threshold: int,
                              recovery: RelationsRecovery | None = None,
                              ) -> tuple[int, HotChanges | None]:
        """Apply a batch of edge changes once each (their applied offsets in `applied`),
        retrying like :meth:`write`; returns how many were new and what the batch did to
        ``hot`` (None when nothing was new). On a cluster `recovery` reads back what a
        failed master lost (:meth:`_write_relations_slots`)."""
        if not changes:
            return 0, None
        if self._slots is not None:
            return await self._retrying(
                lambda: self._write_relations_slots(changes, applied, fanout_threshold,
                                                    recovery),
                f"{len(changes)} relations")

        async def attempt() -> tuple[int, HotChanges | None]:
            async with self._client.pipeline(transaction=True) as pipe:
                fresh, newest = above_applied(changes, await applied.watch(pipe))
                if not fresh:
                    return 0, None
                pipe.multi()
                await self._graph(args=graph_args(self.keys, fresh, fanout_threshold,
                                                  self._fanout), client=pipe)
                applied.move(pipe, newest)
                replies = await pipe.execute()
                return len(fresh), hot_changes(replies[0])

        return await self._retrying(attempt, f"{len(changes)} relations")

    async def _retrying(self, attempt: Callable[[], Awaitable[R]], what: str) -> R:
        """Run `attempt` (one optimistic transaction) until it goes through: again at once
        when the watched offsets moved, after a backoff on any Redis error."""

        async def until_unwatched() -> R:
            while True:
                try:
                    return await attempt()
                except WatchError:
                    continue  # another worker moved the applied offsets: check them again

        async def failed(error: Exception, failures: int) -> None:
            log.warning("redis write of %s failed (attempt %s): %s; retrying in %.2f s",
                        what, failures, error, self._backoff.compute(failures))

        return await self._retry.call_with_retry(until_unwatched, failed,
                                                 with_failure_count=True)

    async def delete_user(self, user_id: str, *, partition: int, offset: int) -> Removed:
        """Remove the user from Redis once for the control record at `offset` of
        `partition` (streams.deletion), retrying like :meth:`write`; what was removed
        (also when applied before: from the receipt)."""
        args = deletion_args(self.keys, group=self._group, topic=self._source_topic,
                           partition=partition, offset=offset, user_id=user_id)

        async def attempt() -> Removed:
            if self._slots is not None:
                return await self._delete_in_slot(user_id, partition, offset)
            return parse_reply(await self._delete(args=args))

        async def failed(error: Exception, failures: int) -> None:
            log.warning("redis deletion of a user failed (attempt %s): %s; retrying in %.2f s",
                        failures, error, self._backoff.compute(failures))

        return await self._retry.call_with_retry(attempt, failed, with_failure_count=True)

    async def forget_receipts(self, committed: Mapping[int, int]) -> int:
        """Drop the deletion receipts of partitions committed past them (`committed`:
        partition -> next offset); how many (raises RedisError). On a cluster: the
        receipts this writer wrote or read (those a dead worker left expire)."""
        if self._slots is not None:
            done = [r for r in self._receipts
                    if r[1] < committed.get(r[0], -1)]
            for _, _, name in done:
                await self._client.delete(name)
            self._receipts = [r for r in self._receipts if r not in done]
            return len(done)
        key = self.keys.deleting(self._group)
        obsolete = obsolete_fields(await self._client.hkeys(key), self._source_topic, committed)
        if obsolete:
            await self._client.hdel(key, *obsolete)
        return len(obsolete)

    async def vector_marks(self, user_ids: Sequence[str]) -> list[tuple[str, int] | None]:
        """(model version, time of the newest event folded in) of each user's vector,
        None where there is none (one round trip; raises RedisError)."""
        async with self._client.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.hmget(self.keys.user_vector(user_id), VERSION_FIELD, NEWEST_FIELD)
            found = await pipe.execute()
        return [None if version is None else (text(version), int(text(newest or b"0")))
                for version, newest in found]

    @property
    def fans_out(self) -> bool:
        """Whether a batch's acts are written into followers' feeds."""
        return self._fanout is not None

    def regressed(self) -> dict[int, int]:
        """On a cluster: partition -> the lowest offset whose effects a failed-over master
        lost (a slot's fence found below what this writer applied); empty when none or
        on a single Redis. With a `recovery` those records were read back and applied
        again in the slots that lost them (:attr:`recovered` counts them)."""
        return dict(self._slots.regressed) if self._slots is not None else {}

    async def applied(self) -> dict[int, int]:
        """Partition of the events topic -> newest offset whose effects are applied."""
        return self._applied.parse(await self._client.hgetall(self._applied.key))

    async def _write_once(self, touches: Sequence[Touch], vectors: Sequence[UserVector]) -> int:
        async with self._client.pipeline(transaction=True) as pipe:
            if not touches:  # vectors alone (re-embedding after a release): overwrites
                await self._queue_effects(pipe, [], vectors)
                await pipe.execute()
                return 0
            fresh, fresh_vectors, newest = unapplied(touches, vectors,
                                                     await self._applied.watch(pipe))
            if not fresh:
                return 0
            pipe.multi()
            fanout_at = await self._queue_effects(pipe, fresh, fresh_vectors)
            self._applied.move(pipe, newest)
            replies = await pipe.execute()
            if fanout_at is not None and self._on_fanout is not None:
                self._on_fanout(fanout_counts(replies[fanout_at]))
            return len(fresh)

    async def _queue_effects(
        self, pipe: Pipeline, touches: Sequence[Touch], vectors: Sequence[UserVector]
    ) -> int | None:
        """The commands of one batch's effects, queued in the open transaction; returns the
        index of the fan-out's reply among the transaction's, if it has one."""
        fanout_at = await self._queue_fanout(pipe, touches)
        for call in self._effects(touches, vectors, users=True, popular=True,
                                  windows=self._windows):
            if call.name == "hset":
                pipe.hset(call.keys[0], items=call.args)
            else:
                await self._scripts[call.name](keys=call.keys, args=call.args, client=pipe)
        return fanout_at

    def _effects(self, touches: Sequence[Touch], vectors: Sequence[UserVector], *,
                 users: bool, popular: bool, windows: Sequence[Window]) -> list[Call]:
        """The calls of a batch's effects: with `users`, on the users' keys (seen, acts,
        vectors, time to live); with `popular`, on the popular set; on the sets of
        `windows`."""
        keys, caps = self.keys, self._caps
        calls: list[Call] = []
        if users:
            sets: list[str] = []
            entries: list[list[object]] = []
            for user_id, user in group_touches(touches).items():
                sets.append(keys.seen(user_id))
                entries.append(flat_entry(caps.seen, user.seen))
                for event_type, items in user.acts.items():
                    sets.append(keys.acts(event_type, user_id))
                    entries.append(flat_entry(caps.acts_of(event_type), items))
            if sets:
                calls.append(Call("touch", sets, [json.dumps(entries, separators=(",", ":"))]))
        sums = popularity_sums(touches) if popular else {}
        if sums:
            calls.append(Call("popular", [keys.popular()], [flat_pairs(sums)]))
        for window in windows:
            ref_ms, amounts = increments(
                ((t.item_id, t.timestamp_ms, t.popularity) for t in touches), window.tau_ms
            )
            if amounts:
                calls.append(Call(
                    "trending", [keys.trending(window.name), keys.trending_base(window.name)],
                    script_args(window.tau_ms, ref_ms, amounts, cap=caps.trending)))
        if not users:
            return calls
        for vector in vectors:
            calls.append(Call("hset", [keys.user_vector(vector.user_id)], [
                VECTOR_FIELD, vector.vector, VERSION_FIELD, vector.version,
                NEWEST_FIELD, vector.newest_ms, WRITTEN_AT_FIELD, vector.written_at_ms]))
        if self._user_ttl_s:
            names, acted = expiring_keys(keys, touches, vectors)
            if names:
                calls.append(Call("expire", names, [self._user_ttl_s, acted]))
        return calls

    async def _write_slots(self, touches: Sequence[Touch], vectors: Sequence[UserVector]) -> int:
        """:meth:`write` on a cluster: every slot's share at once, again for the slots whose
        fence was not as this writer believed, until each is applied. A slot whose fence
        went back (a failover lost writes) gets, with `recovery`, the lost records read
        back from the log in that share, before its fence moves past them."""
        assert self._slots is not None
        applied, todo = 0, None
        again: list[Touch] = []
        gone: list[Deletion] = []
        if self._slots.suspect:
            await self._slots.verify()
        if self._slots.lost and self._recovery is not None:  # found now or by a deletion
            again, gone = await self._read_back(self._slots.take_lost(set(self._slots.lost)))
        audience, read_for, writes = None, -1, 0
        acts: list[SocialAct] = []  # of [*again, *touches], with the audience read for them
        while True:
            if self._fanout is not None and read_for != len(again):  # (again) read back
                acts = social_acts([*again, *touches])
                audience = await clustergraph.read_audience(self._client, self.keys, acts,
                                                            self._fanout)
                read_for = len(again)
            shares = self._shares([*again, *touches], vectors, only=todo, again=len(again),
                                  deletions=gone, audience=audience, acts=acts)
            try:
                done, stale = await self._slots.apply(shares)
            except REDIS_ERRORS:
                self._slots.suspect = True
                raise
            applied += done
            writes += sum(clustergraph.feed_writes(share.calls) for share in shares
                          if share.slot not in stale)
            if not stale:
                if again:
                    self._lost_vectors(again, vectors)
                if audience is not None and self._fanout is not None and self._on_fanout:
                    self._on_fanout(FanoutCounts(writes, clustergraph.skipped_acts(
                        acts[len(again):], audience, self._fanout)))
                return applied
            todo = stale
            if self._recovery is not None:
                lost = self._slots.take_lost(stale)
                if lost:
                    more, more_gone = await self._read_back(lost)
                    again += more
                    gone += more_gone

    async def _read_back(self, lost: Mapping[int, tuple[int, int]]
                         ) -> tuple[list[Touch], list[Deletion]]:
        """The touches and the deletions of the `lost` records (partition -> offsets),
        from the logs."""
        assert self._recovery is not None and self._slots is not None
        since = min(self._slots.first_applied_ms(p, first) for p, (first, _) in lost.items())
        started = time.monotonic()
        if self.before_read_back is not None:
            await self.before_read_back()
        found = await self._recovery.touches(
            lost, since_ms=max(since - RECOVERY_MARGIN_MS, 0) if since else 0)
        deletions = await self._recovery.deletions(lost)
        self.recovered += len(found) + len(deletions)
        log.warning("read back %s accepted records and %s deletions of offsets %s lost with "
                    "a failed master in %.2f s; applying them again", len(found),
                    len(deletions), {p: f"{a}-{b}" for p, (a, b) in sorted(lost.items())},
                    time.monotonic() - started)
        return found, deletions

    def _lost_vectors(self, again: Sequence[Touch], vectors: Sequence[UserVector]) -> None:
        """The users of read-back records whose vector this batch did not write: their
        vector in Redis may be older than their state."""
        written = {v.user_id for v in vectors}
        users = sorted({(t.partition, t.user_id) for t in again if t.user_id not in written})
        if users and self.on_lost_vectors is not None:
            self.on_lost_vectors(users)

    def _shares(self, touches: Sequence[Touch], vectors: Sequence[UserVector], *,
                only: set[int] | None, again: int = 0,
                deletions: Sequence[Deletion] = (),
                audience: clustergraph.Audience | None = None,
                acts: Sequence[SocialAct] = ()) -> list[Share]:
        """Each slot's share of a batch (of the slots in `only`, when given), checked
        against what the writer believes of its fence. A slot holds users' keys, and maybe
        the popular set or a trending window's: the records relevant to it are its users'
        and, with a global set, all of them. The first `again` touches are records read
        back after a failover: applied, not counted. `deletions` were read back too: a
        slot whose fence is below one removes the user's keys first, and applies only
        the user's touches after it (those before it were deleted with the user). With an
        `audience` (the fan-out's read phase) and `acts` (the touches as the fan-out
        sees them, made once per read), a slot of followers' feeds also holds the
        weighted acts of the people they follow."""
        recovered = {(t.partition, t.offset) for t in touches[:again]}
        assert self._slots is not None
        keys = self.keys
        by_slot: dict[int, list[Touch]] = {}
        for touch in touches:
            by_slot.setdefault(slot_of(keys.user_vector(touch.user_id)), []).append(touch)
        vectors_by_slot: dict[int, list[UserVector]] = {}
        for vector in vectors:
            vectors_by_slot.setdefault(slot_of(keys.user_vector(vector.user_id)), []).append(vector)
        deletions_by_slot: dict[int, list[Deletion]] = {}
        for deletion in deletions:
            deletions_by_slot.setdefault(slot_of(keys.user_vector(deletion.user_id)),
                                         []).append(deletion)
        popular_slot = slot_of(keys.popular()) if touches else None
        window_slots = {w.name: slot_of(keys.trending(w.name)) for w in self._windows} \
            if touches else {}
        # slot -> follower there -> indexes of the touches for its feed
        feeds: dict[int, dict[str, list[int]]] = {}
        if audience is not None and self._fanout is not None:
            # a user deleted in the records read back fans nothing out: their acts before
            # the deletion went with them, and the followers a failover brought back are
            # no longer theirs (after it, a new user of that id has none yet)
            feeds = clustergraph.audience_feeds(
                keys, acts, audience, self._fanout.weights,
                skip={d.user_id for d in deletions})
        fanned = {slot: [touches[i] for i in sorted({i for ids in mine.values() for i in ids})]
                  for slot, mine in feeds.items()}
        slots = {*by_slot, *vectors_by_slot, *deletions_by_slot, *window_slots.values(),
                 *fanned}
        if popular_slot is not None:
            slots.add(popular_slot)
        shares = []
        for slot in sorted(slots if only is None else slots & only):
            mine = by_slot.get(slot, [])
            windows = [w for w in self._windows if window_slots.get(w.name) == slot]
            if not mine and not windows and slot != popular_slot and \
                    slot not in vectors_by_slot and slot not in deletions_by_slot:
                # followers' feeds alone (most slots of a batch that fans out)
                shares.append(self._feed_share(slot, feeds[slot], touches, acts))
                continue
            into = fanned.get(slot, [])
            relevant = touches if slot == popular_slot or windows else (
                mine + [t for t in into if slot_of(keys.user_vector(t.user_id)) != slot])
            believed = self._slots.fence(slot)
            deleted = [d for d in deletions_by_slot.get(slot, [])
                       if d.offset > believed.get(d.partition, -1)]
            if not relevant and not deleted:
                # vectors alone (re-embedding after a release): overwrites
                shares.append(Share(slot, calls=self._effects(
                    [], vectors_by_slot.get(slot, []), users=True, popular=False, windows=[])))
                continue
            fresh, newest = above_applied(relevant, believed)
            for d in deleted:
                newest[d.partition] = max(newest.get(d.partition, -1), d.offset)
            after: dict[tuple[int, str], int] = {}  # a deleted user's touches: from it on
            for d in deleted:
                after[d.partition, d.user_id] = max(after.get((d.partition, d.user_id), -1),
                                                    d.offset)
            slot_users = {t.user_id for t in mine}
            users_fresh = [t for t in fresh if t.user_id in slot_users
                           and t.offset > after.get((t.partition, t.user_id), -1)]
            acted = {t.user_id for t in users_fresh}
            calls = [clustergraph.forget_call(
                keys, d.user_id, clustergraph.receipt_key(
                    keys, d.user_id, group=self._group, topic=self._source_topic,
                    partition=d.partition, offset=d.offset), deleted_keys(keys, d.user_id))
                for d in {d.user_id: d for d in deleted}.values()]
            # the vectors of users whose records were all applied before stay as they are;
            # those of users without records here (a vectors-only write) are written
            calls += self._effects(users_fresh, [v for v in vectors_by_slot.get(slot, [])
                                                 if v.user_id in acted
                                                 or v.user_id not in slot_users],
                                   users=True, popular=False, windows=[])
            calls += self._effects(fresh, [], users=False, popular=slot == popular_slot,
                                   windows=windows)
            if into and self._fanout is not None:
                fresh_at = {(t.partition, t.offset) for t in fresh}
                theirs = {follower: [acts[i] for i in ids
                                     if (touches[i].partition, touches[i].offset) in fresh_at]
                          for follower, ids in feeds[slot].items()}
                calls += clustergraph.feed_calls(keys, theirs, self._fanout)[0]
            checks = [(p, believed.get(p, -1), max(believed.get(p, -1), newest.get(p, -1)))
                      for p in sorted({*(t.partition for t in relevant),
                                       *(d.partition for d in deleted)})]
            shares.append(Share(slot, checks, calls, fresh=sum(
                (t.partition, t.offset) not in recovered for t in users_fresh)))
        return shares

    def _feed_share(self, slot: int, feeds: Mapping[str, Sequence[int]],
                    touches: Sequence[Touch], acts: Sequence[SocialAct]) -> Share:
        """The share of a slot that only holds followers' feeds (`feeds`: follower ->
        indexes of its touches): the fresh acts into them, fenced like any share."""
        assert self._slots is not None and self._fanout is not None
        believed = self._slots.fence(slot)
        newest: dict[int, int] = {}
        theirs: dict[str, list[SocialAct]] = {}
        for follower, ids in feeds.items():
            mine = theirs[follower] = []
            for i in ids:
                touch = touches[i]
                newest[touch.partition] = max(newest.get(touch.partition, -1), touch.offset)
                if touch.offset > believed.get(touch.partition, -1):
                    mine.append(acts[i])
        checks = [(p, believed.get(p, -1), max(believed.get(p, -1), n))
                  for p, n in sorted(newest.items())]
        return Share(slot, checks, clustergraph.feed_calls(self.keys, theirs, self._fanout)[0])

    async def _delete_in_slot(self, user_id: str, partition: int, offset: int) -> Removed:
        """:meth:`delete_user` on a cluster: the user's keys go, fenced by their slot's
        fence, their edges kept in a receipt in that slot (:data:`clustergraph.FORGET_USER`);
        the other side of each edge goes with the tombstones made from it."""
        assert self._slots is not None
        keys, slot = self.keys, slot_of(self.keys.user_vector(user_id))
        receipt = clustergraph.receipt_key(keys, user_id, group=self._group,
                                           topic=self._source_topic, partition=partition,
                                           offset=offset)
        while True:
            held = self._slots.fence(slot).get(partition, -1)
            now = offset > held
            share = Share(slot, [(partition, held, max(held, offset))],
                          [clustergraph.forget_call(keys, user_id, receipt,
                                                    deleted_keys(keys, user_id))]
                          if now else [])
            _, stale = await self._slots.apply([share])
            if stale:
                continue
            raw = clustergraph.receipt_json(await self._client.get(receipt))
            if raw is not None or not now:
                break
            # applied, yet no receipt: the master acknowledged the script and died before
            # its replica had it, and the fence went back with it. The records lost with
            # it (this deletion among them) are read back and applied first, so the fence
            # never moves past one of them; then the receipt is there
            await self._slots.verify()
            if self._slots.fence(slot).get(partition, -1) >= offset:
                log.error("a deletion's receipt is gone although its fence holds it: its "
                          "tombstones cannot be sent")
                break
            log.warning("the deletion of a user was lost with a failed master; again")
            if self._recovery is not None:
                await self._write_slots([], [])
        await self._client.srem(keys.hot(), user_id)
        if raw is not None and (partition, offset, receipt) not in self._receipts:
            self._receipts.append((partition, offset, receipt))
        return parse_reply([int(now), raw])

    def _relation_writer(self, applied: AppliedOffsets) -> SlotWriter:
        if self._relation_slots is None:
            if not applied.group:
                raise ValueError("on a Redis Cluster the relations' applied offsets name "
                                 "their consumer group")
            keys, group = self.keys, applied.group
            self._relation_slots = SlotWriter(
                self._client, topic=applied.topic,
                fence_key=lambda slot: keys.fence(group, slot), functions=self._functions)
        return self._relation_slots

    async def _write_relations_slots(self, changes: Sequence[EdgeChange],
                                     applied: AppliedOffsets, threshold: int,
                                     recovery: RelationsRecovery | None,
                                     ) -> tuple[int, HotChanges | None]:
        """:meth:`write_relations` on a cluster: the read phase (the acts a new edge
        copies), every slot's share of the edges fenced in that slot, then ``hot`` from
        the followees' counts (:mod:`streams.clustergraph`). A slot whose fence went back
        (a failed master lost edges) gets, with `recovery`, the lost records read back
        from ``relations`` in this share, in offset order before the batch's, before its
        fence moves past them."""
        writer = self._relation_writer(applied)
        if writer.suspect:
            await writer.verify()
        again: list[EdgeChange] = []
        if writer.lost and recovery is not None:
            again = await self._relations_read_back(writer, set(writer.lost), recovery)
        fresh_total, todo, built_for = 0, None, -1
        by_slot: dict[int, list[tuple[EdgeChange, Call]]] = {}
        while True:
            if built_for != len(again):  # the read phase and the calls, of what is known
                known = {(c.partition, c.offset) for c in changes}
                merged = sorted([*(c for c in again if (c.partition, c.offset) not in known),
                                 *changes], key=lambda c: (c.partition, c.offset))
                backfill = await clustergraph.read_backfill(self._client, self.keys, merged,
                                                            self._fanout)
                by_slot = clustergraph.edge_calls(self.keys, merged, backfill, self._fanout)
                built_for = len(again)
            recovered = {(c.partition, c.offset) for c in again}
            shares = []
            for slot in sorted(by_slot if todo is None else set(by_slot) & todo):
                believed = writer.fence(slot)
                mine = by_slot[slot]
                newest: dict[int, int] = {}
                for change, _ in mine:
                    newest[change.partition] = max(newest.get(change.partition, -1),
                                                   change.offset)
                fresh = [(c, call) for c, call in mine
                         if c.offset > believed.get(c.partition, -1)]
                shares.append(Share(
                    slot, [(p, believed.get(p, -1), max(believed.get(p, -1), n))
                           for p, n in sorted(newest.items())],
                    [call for _, call in fresh],
                    fresh=sum(call.name == "follower_side"
                              and (c.partition, c.offset) not in recovered
                              for c, call in fresh)))
            try:
                done, stale = await writer.apply(shares)
            except REDIS_ERRORS:
                writer.suspect = True
                raise
            fresh_total += done
            if not stale:
                break
            todo = stale
            if recovery is not None and set(writer.lost) & stale:
                again += await self._relations_read_back(writer, stale, recovery)
        hot = await clustergraph.settle_hot(self._client, self.keys,
                                            (c.followee_id for c in changes), threshold)
        return fresh_total, hot if fresh_total else None

    async def _relations_read_back(self, writer: SlotWriter, slots: set[int],
                                   recovery: RelationsRecovery) -> list[EdgeChange]:
        lost = writer.take_lost(slots)
        if not lost:
            return []
        started = time.monotonic()
        found = await recovery.changes(lost)
        self.recovered += len(found)
        log.warning("read back %s edge changes of offsets %s lost with a failed master in "
                    "%.2f s; applying them again", len(found),
                    {p: f"{a}-{b}" for p, (a, b) in sorted(lost.items())},
                    time.monotonic() - started)
        return found

    async def _queue_fanout(self, pipe: Pipeline, touches: Sequence[Touch]) -> int | None:
        """The batch's acts into their actors' followers' feeds (hot actors skipped)."""
        if self._fanout is None or not touches:
            return None
        entries = feed_entries(social_acts(touches), self._fanout)
        if not entries:
            return None
        at = len(pipe.command_stack)
        await self._fanout_script(args=fanout_args(self.keys, self._fanout, entries), client=pipe)
        return at


def social_act(t: Touch) -> SocialAct:
    """A touch as the fan-out sees it."""
    return SocialAct(t.user_id, t.event_type, t.item_id, t.timestamp_ms)


def social_acts(touches: Sequence[Touch]) -> list[SocialAct]:
    return [social_act(t) for t in touches]
