"""A whole batch of events through EventsHandler without Kafka or Redis: the handler's
ports (streams.events.ports) are the worker's in-memory catalog and stores, and fakes
of the online store and the model."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pytest

from contracts.deletions import control_headers
from protos import events_pb2
from streams.catalog import Catalog
from streams.deletion import Removed
from streams.events.handler import EventsHandler
from streams.events.seenstore import SeenStore
from streams.events.stages.admit import Policy
from streams.events.userstore import UserStore
from streams.history import decode_state, weights_by_type
from streams.metrics import StreamsMetrics
from streams.online import Touch, UserVector
from streams.records import Output
from streams.seen import SeenIds
from streams.settings import DEFAULT_WEIGHTS
from streams.towerprocess import TowerProcessError
from streams.history import Interaction
from streams.userencoder import WeightedMean
from streams.vectors import VectorLookup
from streams.validation import EventLimits
from streams.waiting import WaitingUsers

NOW_MS = 1_790_000_000_000
DIM = 4
ENRICHED, DLQ = "events.enriched", "events.dlq"
USERS, DEDUPE, RELATIONS = "users-changelog", "dedupe-changelog", "relations"
POLICY = Policy(limits=EventLimits(max_bytes=4096, max_future_skew_ms=60_000),
                weights=weights_by_type(DEFAULT_WEIGHTS), history_length=10, dedupe_window=10)


class Consumed(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class FakeOnline:
    """The online store's writes, kept; `failing` makes every write raise."""

    def __init__(self, failing: bool = False) -> None:
        self.failing = failing
        self.touches: list[Touch] = []
        self.vectors: list[UserVector] = []

    async def write(self, touches: Sequence[Touch], vectors: Sequence[UserVector]) -> int:
        if self.failing:
            raise RuntimeError("online store broken")
        self.touches += touches
        self.vectors += vectors
        return len(touches)

    async def vector_marks(self, user_ids: Sequence[str]) -> list[tuple[str, int] | None]:
        found = {v.user_id: (v.version, v.newest_ms) for v in self.vectors}
        return [found.get(user_id) for user_id in user_ids]

    async def delete_user(self, user_id: str, *, partition: int, offset: int) -> Removed:
        self.vectors = [v for v in self.vectors if v.user_id != user_id]
        return Removed(following={}, followers={}, now=True)

    async def forget_receipts(self, committed: Mapping[int, int]) -> int:
        return 0


class FakeModel:
    version = "base"
    user_encoder = WeightedMean(3_600_000.0)


class FakeModels:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.current = FakeModel()

    @property
    def version(self) -> str:
        return self.current.version


def event(event_id: str, user: str, item: str, offset: int, partition: int = 0,
          kind: int = events_pb2.CLICK) -> Consumed:
    value = events_pb2.Event(
        event_id=event_id, user_id=user, item_id=item, type=kind,  # type: ignore[arg-type]
        timestamp_ms=NOW_MS - 1000 + offset,
    ).SerializeToString()
    return Consumed("events", partition, offset, NOW_MS - 50, user.encode(), value)


def make_handler(online: FakeOnline, vector_mode: str = "auto",
                 ) -> tuple[EventsHandler, UserStore, SeenStore]:
    catalog = Catalog(model_version="base", dim=DIM)
    for n, item_id in enumerate(["i1", "i2"]):
        catalog.put_item(events_pb2.Item(item_id=item_id, title=f"Film {n}"))
        vector = np.zeros(DIM, np.float32)
        vector[n] = 1.0
        catalog.put_vector(events_pb2.ItemVector(item_id=item_id, model_version="base",
                                                 vector=vector.tolist()))
    catalog.put_item(events_pb2.Item(item_id="i3", title="Film without a vector"))
    users = UserStore(topic=USERS, bootstrap_servers=[])
    seen = SeenStore(topic=DEDUPE, bootstrap_servers=[], window_ms=7 * 24 * 3600 * 1000)
    handler = EventsHandler(
        catalog=catalog, users=users, seen=seen, online=online, enriched=ENRICHED, dlq=DLQ,
        relations=RELATIONS, policy=POLICY, live=FakeModels(), metrics=StreamsMetrics(),
        waiting=WaitingUsers(max_users=100), clock=lambda: NOW_MS,
        vector_mode=vector_mode,  # type: ignore[arg-type]  # a bad one is tested too
    )
    return handler, users, seen


def of_topic(outputs: list[Output], topic: str) -> list[Output]:
    return [output for output in outputs if output[0] == topic]


def reasons(outputs: list[Output]) -> list[tuple[int, str]]:
    letters = [events_pb2.DeadLetter.FromString(value)  # type: ignore[arg-type]
               for _, _, _, value in of_topic(outputs, DLQ)]
    return [(letter.origin_offset, letter.reason) for letter in letters]


BATCH = [
    event("e1", "u1", "i1", 0),
    event("e2", "u1", "i2", 1, kind=events_pb2.PURCHASE),
    event("e1", "u1", "i1", 2),  # the same event again: a duplicate
    Consumed("events", 0, 3, NOW_MS - 50, b"u2", b"\xff\xff"),  # not an Event
    event("e3", "u3", "nope", 4),  # not in the catalog
    event("e4", "u4", "i3", 0, partition=1),  # an item without a vector yet
]


async def test_a_batch_gives_enriched_events_dead_letters_states_ids_and_online_writes() -> None:
    online = FakeOnline()
    handler, users, seen = make_handler(online)
    outputs = await handler.handle(BATCH)

    assert sorted(outputs) == [0, 1]
    enriched = [events_pb2.EnrichedEvent.FromString(value)  # type: ignore[arg-type]
                for _, _, _, value in of_topic(outputs[0], ENRICHED)]
    assert [(e.event.event_id, e.item.item_id, e.weight, e.source_offset) for e in enriched] == \
        [("e1", "i1", POLICY.weights[events_pb2.CLICK], 0),
         ("e2", "i2", POLICY.weights[events_pb2.PURCHASE], 1)]
    assert {key for _, _, key, _ in of_topic(outputs[0], ENRICHED)} == {b"u1"}
    assert reasons(outputs[0]) == [(2, "duplicate"), (3, "undecodable"), (4, "unknown_item")]
    assert reasons(outputs[1]) == []
    # The changed user states go to the users changelog, in the user's partition.
    ((_, partition, key, value),) = of_topic(outputs[0], USERS)
    assert (partition, key) == (0, b"u1")
    assert decode_state(value) == users.get(0, "u1")
    assert [i.item_id for i in users.get(0, "u1").history] == ["i1", "i2"]
    assert users.get(0, "u1").accepted == (("e1", 0), ("e2", 1))
    # The accepted ids go to the dedupe changelog and the partition's window.
    dedupe = of_topic(outputs[0], DEDUPE)
    assert {partition for _, partition, _, _ in dedupe} == {0}
    compacted: dict[bytes, bytes] = {}
    for _, _, key, value in dedupe:
        if value is None:
            compacted.pop(key, None)  # type: ignore[arg-type]
        else:
            compacted[key] = value  # type: ignore[index]
    restored = SeenIds(window_ms=seen.window_ms)
    restored.load(compacted)  # what a restore of the changelog gives back
    assert len(restored) == 2
    assert len(seen.of(0)) == 2 and len(seen.of(1)) == 1
    # Redis: every accepted event's touch, and the vectors of the users with one.
    assert [(t.user_id, t.item_id, t.partition, t.offset) for t in online.touches] == \
        [("u1", "i1", 0, 0), ("u1", "i2", 0, 1), ("u4", "i3", 1, 0)]
    ((vector,),) = [[v for v in online.vectors if v.user_id == "u1"]]
    assert vector.version == "base" and vector.written_at_ms == NOW_MS
    assert "u4" not in {v.user_id for v in online.vectors}  # i3 has no vector yet
    assert handler.waiting.waits_for((1, "u4")) == frozenset({"i3"})
    assert handler.accepted == 3
    assert handler.rejected == {"duplicate": 1, "undecodable": 1, "unknown_item": 1}


async def test_an_id_of_an_earlier_batch_is_a_duplicate_through_the_window() -> None:
    handler, _, _ = make_handler(FakeOnline())
    await handler.handle(BATCH)
    outputs = await handler.handle([event("e2", "u1", "i2", 9)])
    assert reasons(outputs[0]) == [(9, "duplicate")]
    assert of_topic(outputs[0], USERS) == [] and of_topic(outputs[0], DEDUPE) == []


async def test_a_failed_online_write_dead_letters_the_accepted_events() -> None:
    handler, _, seen = make_handler(FakeOnline(failing=True))
    outputs = await handler.handle(BATCH[:2])
    assert reasons(outputs[0]) == [(0, "internal_error"), (1, "internal_error")]
    assert of_topic(outputs[0], ENRICHED) == [] and of_topic(outputs[0], DEDUPE) == []
    assert len(seen.of(0)) == 0  # not remembered: a re-sent copy can still be accepted
    assert handler.accepted == 0 and handler.rejected == {"internal_error": 2}


@pytest.mark.parametrize("users, expected", [(None, {"u1"}), ({(0, "u1")}, {"u1"})])
async def test_reembedding_writes_vectors_of_the_version_in_use(
    users: set[tuple[int, str]] | None, expected: set[str]
) -> None:
    online = FakeOnline()
    handler, _, _ = make_handler(online)
    await handler.handle(BATCH[:2])
    online.vectors.clear()
    assert await handler.reembed(users) == 1
    assert {v.user_id for v in online.vectors} == expected


class Tower:
    """A heavy encoder (a trained tower's kind) that counts its calls."""

    heavy = True

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.process_dies = 0  # this many calls fail as a tower process that died would

    def encode(self, histories: Sequence[Sequence[Interaction]], lookup: VectorLookup
               ) -> list[np.ndarray | None]:
        self.calls.append(len(histories))
        return WeightedMean(3_600_000.0).encode(histories, lookup)

    async def encode_async(self, histories: Sequence[Sequence[Interaction]],
                           lookup: VectorLookup) -> list[np.ndarray | None]:
        if self.process_dies:
            self.process_dies -= 1
            raise TowerProcessError("the user tower's process died")
        return self.encode(histories, lookup)


class TowerModel:
    version = "v1"

    def __init__(self) -> None:
        self.user_encoder = Tower()


def tower_handler(online: FakeOnline) -> tuple[EventsHandler, UserStore, Tower]:
    handler, users, _ = make_handler(online)
    model = TowerModel()
    handler._live.current = model  # type: ignore[attr-defined,misc]
    return handler, users, model.user_encoder


async def pass_with_batch_between(handler: EventsHandler,
                                  between: Callable[[], Awaitable[object]]) -> int:
    """A deferred pass while a batch waits for ``live.lock`` (as the consumer does): the
    batch runs after the pass has read its users' states and before it writes."""
    lock = handler._live.lock  # type: ignore[attr-defined]
    await lock.acquire()
    running = asyncio.create_task(handler.embed_pending(most=100))
    await asyncio.sleep(0)  # the pass waits for the lock to read the states

    async def batch() -> None:
        async with lock:
            await between()

    waiting = asyncio.create_task(batch())
    await asyncio.sleep(0)  # the batch waits behind the pass
    lock.release()
    written = await running
    await waiting
    return written


def test_auto_defers_for_a_tower_and_not_for_the_weighted_mean() -> None:
    handler, _, _ = make_handler(FakeOnline())
    assert not handler.defers()
    assert make_handler(FakeOnline(), "deferred")[0].defers()
    handler, _, _ = tower_handler(FakeOnline())
    assert handler.defers()
    handler.vector_mode = "inline"
    assert not handler.defers()
    with pytest.raises(ValueError, match="vector_mode"):
        make_handler(FakeOnline(), "sometimes")


async def test_deferred_batches_write_their_events_at_once_and_one_pass_embeds_each_user(
) -> None:
    online = FakeOnline()
    handler, users, tower = tower_handler(online)
    await handler.handle([event("e1", "u1", "i1", 0)])
    await handler.handle([event("e2", "u1", "i2", 1), event("e3", "u2", "i1", 2)])
    # The events' online state is written, with no vector and no encoder call yet.
    assert [t.offset for t in online.touches] == [0, 1, 2]
    assert online.vectors == [] and tower.calls == []
    assert len(handler.pending) == 2

    assert await handler.embed_pending(most=100) == 2
    assert tower.calls == [2]  # u1's two batches cost one pass
    by_user = {v.user_id: v for v in online.vectors}
    assert set(by_user) == {"u1", "u2"} and by_user["u1"].version == "v1"
    assert by_user["u1"].newest_ms == max(i.timestamp_ms for i in users.get(0, "u1").history)
    assert len(handler.pending) == 0


async def test_a_pass_takes_the_users_noted_first_and_leaves_the_rest_for_the_next() -> None:
    online = FakeOnline()
    handler, _, tower = tower_handler(online)
    await handler.handle([event(f"e{n}", f"u{n}", "i1", n) for n in range(5)])
    assert await handler.embed_pending(most=3) == 3
    assert [v.user_id for v in online.vectors] == ["u0", "u1", "u2"]
    assert await handler.embed_pending(most=3) == 2
    assert tower.calls == [3, 2]


async def test_users_of_a_pass_whose_tower_process_died_wait_for_the_next_pass() -> None:
    online = FakeOnline()
    handler, _, tower = tower_handler(online)
    await handler.handle([event(f"e{n}", f"u{n}", "i1", n) for n in range(3)])
    tower.process_dies = 1
    assert await handler.embed_pending(most=100) == 0
    assert online.vectors == [] and len(handler.pending) == 3
    assert await handler.embed_pending(most=100) == 3
    assert sorted(v.user_id for v in online.vectors) == ["u0", "u1", "u2"]


async def test_a_user_who_acts_during_a_pass_is_embedded_again_by_the_next() -> None:
    online = FakeOnline()
    handler, users, tower = tower_handler(online)
    await handler.handle([event("e1", "u1", "i1", 0)])
    written = await pass_with_batch_between(
        handler, lambda: handler.handle([event("e2", "u1", "i2", 1)]))
    assert written == 1
    assert (0, "u1") in handler.pending
    assert await handler.embed_pending(most=100) == 1
    newest = max(i.timestamp_ms for i in users.get(0, "u1").history)
    assert online.vectors[-1].newest_ms == newest > online.vectors[0].newest_ms


async def test_a_user_deleted_during_a_pass_gets_no_vector() -> None:
    online = FakeOnline()
    handler, _, tower = tower_handler(online)
    await handler.handle([event("e1", "u1", "i1", 0), event("e2", "u2", "i1", 1)])
    deletion = events_pb2.UserDeletion(user_id="u1", requested_at_ms=NOW_MS)
    control = Consumed("events", 0, 2, NOW_MS, b"u1", deletion.SerializeToString(),
                       tuple(control_headers()))
    assert await pass_with_batch_between(handler, lambda: handler.handle([control])) == 1
    assert [v.user_id for v in online.vectors] == ["u2"]
    assert tower.calls == [2]  # u1 was embedded, and the vector dropped


async def test_a_pass_writes_nothing_for_a_partition_that_went_elsewhere_or_a_new_model(
) -> None:
    online = FakeOnline()
    handler, users, tower = tower_handler(online)
    await handler.handle([event("e1", "u1", "i1", 0), event("e4", "u4", "i1", 0, partition=1)])

    async def revoke() -> None:
        users.drop([1])  # partition 1 went elsewhere meanwhile

    assert await pass_with_batch_between(handler, revoke) == 1
    assert [v.user_id for v in online.vectors] == ["u1"]

    await handler.handle([event("e2", "u1", "i2", 1)])

    async def switch() -> None:
        handler._live.current = TowerModel()  # type: ignore[attr-defined,misc]

    assert await pass_with_batch_between(handler, switch) == 0
    assert len(online.vectors) == 1


async def test_a_restored_user_whose_vector_is_older_than_its_state_is_embedded_again(
) -> None:
    online = FakeOnline()
    handler, users, tower = tower_handler(online)
    await handler.handle([event("e1", "u1", "i1", 0), event("e2", "u2", "i1", 1)])
    await handler.embed_pending(most=100)
    await handler.handle([event("e3", "u1", "i2", 2)])
    # The worker stops before its deferred pass: u1's vector lags its state.
    restarted, _, _ = make_handler(online)
    restarted._users = users  # type: ignore[attr-defined]  # the state restored
    restarted._live.current = TowerModel()  # type: ignore[attr-defined,misc]
    restarted._live.current.version = "v1"  # type: ignore[attr-defined,misc]
    restarted.note_waiting([0])
    assert await restarted.embed_waiting() == 1
    newest = max(i.timestamp_ms for i in users.get(0, "u1").history)
    assert [(v.user_id, v.newest_ms) for v in online.vectors][-1] == ("u1", newest)
