"""streams.events.stages.admit and .outputs: admit (catalog join, dedupe, replay) and the outgoing messages."""

from __future__ import annotations

import pytest

from protos import events_pb2
from streams.errors import Duplicate, Undecodable, UnknownItem
from streams.history import UserState, weights_by_type
from streams.events.stages.admit import Accepted, Policy, Rejected, admit, admit_batch
from streams.events.stages.outputs import enriched_event
from streams.records import INTERNAL_ERROR, Record, dead_letter
from streams.seen import SeenIds, event_key, id_hashes
from streams.settings import DEFAULT_WEIGHTS
from streams.validation import EventLimits

NOW_MS = 1_790_000_000_000
POLICY = Policy(
    limits=EventLimits(max_bytes=4096, max_future_skew_ms=60_000),
    weights=weights_by_type(DEFAULT_WEIGHTS),
    history_length=10,
    dedupe_window=10,
)
CATALOG = {"i1": events_pb2.Item(item_id="i1", title="Heat (1995)")}


def record(event_id: str = "e1", item_id: str = "i1", offset: int = 5,
           kind: int = events_pb2.PURCHASE) -> Record:
    event = events_pb2.Event(
        event_id=event_id, user_id="u1", item_id=item_id, type=kind,  # type: ignore[arg-type]
        timestamp_ms=NOW_MS - 10,
    )
    return Record("events", 2, offset, b"u1", event.SerializeToString())


class States:
    """A dict-backed state store, as the users table is."""

    def __init__(self) -> None:
        self.data: dict[str, UserState] = {}

    def __call__(self, user_id: str) -> UserState:
        return self.data.get(user_id, UserState())


def run(rec: Record, states: States) -> object:
    accepted = admit(rec, items=CATALOG.get, state_of=states, now_ms=NOW_MS, policy=POLICY)
    if not accepted.replay:
        states.data[accepted.event.user_id] = accepted.state
    return accepted


def test_accepts_joins_item_and_folds_history() -> None:
    states = States()
    accepted = admit(record(), items=CATALOG.get, state_of=states, now_ms=NOW_MS, policy=POLICY)
    assert accepted.item.title == "Heat (1995)"
    assert accepted.weight == 5.0
    assert not accepted.replay
    assert [i.item_id for i in accepted.state.history] == ["i1"]
    assert accepted.state.accepted == (("e1", 5),)


def test_unknown_item() -> None:
    with pytest.raises(UnknownItem) as raised:
        admit(record(item_id="nope"), items=CATALOG.get, state_of=States(), now_ms=NOW_MS,
              policy=POLICY)
    assert raised.value.reason == "unknown_item"


def test_same_event_id_at_another_offset_is_a_duplicate() -> None:
    states = States()
    run(record(offset=5), states)
    with pytest.raises(Duplicate) as raised:
        run(record(offset=9), states)
    assert raised.value.reason == "duplicate"
    assert len(states.data["u1"].history) == 1


def test_same_event_at_the_same_offset_is_a_replay() -> None:
    states = States()
    run(record(offset=5), states)
    replayed = admit(record(offset=5), items=CATALOG.get, state_of=states, now_ms=NOW_MS,
                     policy=POLICY)
    assert replayed.replay
    assert replayed.state == states.data["u1"]  # not folded twice


def test_validation_errors_come_through() -> None:
    garbage = Record("events", 0, 1, b"u1", b"\xff\xff")
    with pytest.raises(Undecodable):
        admit(garbage, items=CATALOG.get, state_of=States(), now_ms=NOW_MS, policy=POLICY)


def test_dead_letter_keeps_bytes_reason_and_origin() -> None:
    rec = Record("events", 3, 42, b"k", b"\xff\xff")
    letter = dead_letter(rec, reason="undecodable", detail="detail text", now_ms=NOW_MS)
    assert (letter.payload, letter.key, letter.detail) == (b"\xff\xff", b"k", "detail text")
    assert letter.reason == "undecodable"
    assert (letter.origin_topic, letter.origin_partition, letter.origin_offset) == ("events", 3, 42)
    assert letter.failed_at_ms == NOW_MS
    letter = dead_letter(Record("events", 0, 0, None, None), reason="unknown_item",
                         detail="x" * 5000, now_ms=NOW_MS)
    assert (letter.payload, letter.key, letter.reason) == (b"", b"", "unknown_item")
    assert len(letter.detail) == 1000


def test_enriched_event_carries_event_item_weight_and_source() -> None:
    rec = record()
    accepted = admit(rec, items=CATALOG.get, state_of=States(), now_ms=NOW_MS, policy=POLICY)
    message = enriched_event(rec, accepted, now_ms=NOW_MS + 1)
    assert message.event.event_id == "e1"
    assert message.item.item_id == "i1"
    assert message.weight == 5.0
    source = (message.source_topic, message.source_partition, message.source_offset)
    assert source == ("events", 2, 5)
    assert message.processed_at_ms == NOW_MS + 1


def test_batch_chains_state_and_catches_duplicates_inside_it() -> None:
    states = States()
    records = [record("e1", offset=1), record("e2", offset=2), record("e1", offset=3),
               Record("events", 2, 4, b"u1", b"\xff\xff")]
    batch = admit_batch(records, items=CATALOG.get, state_of=states, now_ms=NOW_MS,
                        policy=POLICY)
    kinds = [o.reason if isinstance(o, Rejected) else "accepted" for _, o in batch.outcomes]
    assert kinds == ["accepted", "accepted", "duplicate", "undecodable"]
    assert [r.offset for r, _ in batch.outcomes] == [1, 2, 3, 4]
    partition, state = batch.changed["u1"]
    assert partition == 2
    assert state.accepted == (("e1", 1), ("e2", 2))
    second = batch.outcomes[1][1]
    assert isinstance(second, Accepted) and second.state == state


def test_batch_replay_changes_no_state() -> None:
    states = States()
    run(record("e1", offset=1), states)
    batch = admit_batch([record("e1", offset=1)], items=CATALOG.get, state_of=states,
                        now_ms=NOW_MS, policy=POLICY)
    ((_, outcome),) = batch.outcomes
    assert isinstance(outcome, Accepted) and outcome.replay
    assert batch.changed == {}


def test_batch_isolates_a_failing_record() -> None:
    def items(item_id: str) -> events_pb2.Item | None:
        if item_id == "boom":
            raise RuntimeError("catalog bug")
        return CATALOG.get(item_id)

    batch = admit_batch([record("e1", item_id="boom", offset=1), record("e2", offset=2)],
                        items=items, state_of=States(), now_ms=NOW_MS, policy=POLICY)
    first, second = (o for _, o in batch.outcomes)
    assert isinstance(first, Rejected) and first.reason == INTERNAL_ERROR
    assert "catalog bug" in first.detail
    assert isinstance(second, Accepted)


def test_batch_dedupes_within_the_window_as_one_record_at_a_time_does() -> None:
    """An id leaves the dedupe memory after `dedupe_window` newer accepted events, in a
    batch as in record-by-record admission."""
    policy = Policy(limits=POLICY.limits, weights=POLICY.weights, history_length=10,
                    dedupe_window=3)
    states = States()
    run(record("e0", offset=0), states)  # remembered before the batch
    ids = ["e1", "e0", "e2", "e3", "e0", "e4", "e2", "e4"]
    records = [record(event_id, offset=n + 1) for n, event_id in enumerate(ids)]
    batch = admit_batch(records, items=CATALOG.get, state_of=states, now_ms=NOW_MS,
                        policy=policy)
    one_by_one = States()
    one_by_one.data = dict(states.data)
    expected = []
    for rec in records:
        try:
            accepted = admit(rec, items=CATALOG.get, state_of=one_by_one, now_ms=NOW_MS,
                             policy=policy)
        except Duplicate:
            expected.append("duplicate")
        else:
            one_by_one.data["u1"] = accepted.state
            expected.append("accepted")
    kinds = [o.reason if isinstance(o, Rejected) else "accepted" for _, o in batch.outcomes]
    # e0 is still remembered at first; after e1, e2, e3 it is forgotten and comes back in;
    # so is e2 after e3, e0, e4.
    assert kinds == expected == ["accepted", "duplicate", "accepted", "accepted", "accepted",
                                 "accepted", "accepted", "duplicate"]
    assert batch.changed["u1"][1] == one_by_one.data["u1"]


DAY_MS = 24 * 3600 * 1000


def timed(event_id: str, offset: int, timestamp_ms: int, user: str = "u1") -> Record:
    event = events_pb2.Event(event_id=event_id, user_id=user, item_id="i1",
                             type=events_pb2.CLICK, timestamp_ms=timestamp_ms)
    return Record("events", 2, offset, user.encode(), event.SerializeToString())


class Windowed:
    """Batches through admit_batch with a dedupe window, applied as the handler does."""

    def __init__(self, window_ms: int = 7 * DAY_MS) -> None:
        self.states = States()
        self.window = SeenIds(window_ms=window_ms)

    def run(self, records: list[Record]) -> list[str]:
        batch = admit_batch(records, items=CATALOG.get, state_of=self.states, now_ms=NOW_MS,
                            policy=POLICY, seen=lambda partition: self.window)
        for user_id, (_, state) in batch.changed.items():
            self.states.data[user_id] = state
        for hashes, times in batch.seen.values():
            self.window.add(hashes, times)
        return [o.reason if isinstance(o, Rejected) else "accepted" for _, o in batch.outcomes]


def test_a_resent_id_is_a_duplicate_however_many_events_the_user_had_since() -> None:
    windowed = Windowed()
    first = [timed(f"e{k}", k, NOW_MS - 10_000 + k) for k in range(3 * POLICY.dedupe_window)]
    assert windowed.run(first[:15]) == ["accepted"] * 15
    assert windowed.run(first[15:]) == ["accepted"] * (len(first) - 15)
    # The user state remembers only the newest dedupe_window ids; the window all of them.
    assert len(windowed.states.data["u1"].accepted) == POLICY.dedupe_window
    again = [timed(f"e{k}", 1000 + k, NOW_MS - 10_000 + k) for k in range(len(first))]
    assert windowed.run(again) == ["duplicate"] * len(first)


def test_a_repeat_inside_one_batch_beyond_the_users_recent_ids_is_a_duplicate() -> None:
    windowed = Windowed()
    records = [timed(f"e{k}", k, NOW_MS - 1000) for k in range(POLICY.dedupe_window + 5)]
    records.append(timed("e0", 500, NOW_MS - 1000))
    assert windowed.run(records)[-1] == "duplicate"


def test_an_event_older_than_the_window_before_the_watermark_is_too_old() -> None:
    windowed = Windowed(window_ms=7 * DAY_MS)
    start = NOW_MS - 50 * DAY_MS
    # In event-time order (as ingest replays), weeks of events pass; users interleave.
    replay = [timed(f"r{k}", k, start + k * DAY_MS, user=f"u{k % 3}") for k in range(30)]
    assert windowed.run(replay) == ["accepted"] * 30
    late = [timed("late-within", 40, start + 23 * DAY_MS),  # 6 days before the newest
            timed("late-beyond", 41, start + 21 * DAY_MS),  # 8 days before: maybe forgotten
            timed("r0", 42, start)]  # a re-sent id, also beyond: too_old, not a duplicate
    assert windowed.run(late) == ["accepted", "too_old", "too_old"]
    # Within one batch, the watermark moves with each accepted event.
    batch = [timed("jump", 50, start + 40 * DAY_MS), timed("behind", 51, start + 31 * DAY_MS)]
    assert windowed.run(batch) == ["accepted", "too_old"]


def test_the_same_event_id_of_two_users_is_two_events() -> None:
    windowed = Windowed()
    assert windowed.run([timed("e1", 1, NOW_MS - 5, user="u1")]) == ["accepted"]
    assert windowed.run([timed("e1", 2, NOW_MS - 5, user="u2"),
                         timed("e1", 3, NOW_MS - 5, user="u2")]) == ["accepted", "duplicate"]


def test_the_batch_carries_only_accepted_ids_for_the_window() -> None:
    windowed = Windowed()
    records = [timed("a", 1, NOW_MS - 5), timed("a", 2, NOW_MS - 5),
               Record("events", 2, 3, b"u1", b"\xff"), timed("b", 4, NOW_MS - 3)]
    batch = admit_batch(records, items=CATALOG.get, state_of=windowed.states, now_ms=NOW_MS,
                        policy=POLICY, seen=lambda partition: windowed.window)
    hashes, times = batch.seen[2]
    assert hashes.tolist() == id_hashes([event_key("u1", "a"), event_key("u1", "b")]).tolist()
    assert times.tolist() == [NOW_MS - 5, NOW_MS - 3]
