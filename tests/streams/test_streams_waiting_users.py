"""streams.waiting and Catalog.take_arrived: which users wait for which item vectors."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from protos import events_pb2
from streams.catalog import Catalog
from streams.history import Interaction
from streams.waiting import UserKey, WaitingUsers, missing_items

ITEMS = ["a", "b", "c", "d"]


def interaction(item_id: str) -> Interaction:
    return Interaction(item_id, events_pb2.VIEW, 1_790_000_000_000, 1.0)


def test_missing_items_are_those_without_a_vector() -> None:
    history = [interaction(i) for i in ["a", "b", "a", "c"]]
    assert missing_items(history, {"b"}) == {"a", "c"}
    assert missing_items(history, set(ITEMS)) == frozenset()


def test_a_user_waits_until_one_of_their_items_arrives() -> None:
    waiting = WaitingUsers(max_users=10)
    waiting.note((0, "u1"), frozenset({"a", "b"}))
    waiting.note((1, "u2"), frozenset({"b"}))
    waiting.note((1, "u3"), frozenset())  # complete: not held
    assert len(waiting) == 2
    assert waiting.take({"c"}) == set()
    assert waiting.take({"a"}) == {(0, "u1")}
    assert waiting.waits_for((0, "u1")) == frozenset()  # forgotten until embedded again
    assert waiting.take({"b"}) == {(1, "u2")} and len(waiting) == 0


def test_a_new_note_replaces_the_old_one() -> None:
    waiting = WaitingUsers(max_users=10)
    waiting.note((0, "u1"), frozenset({"a", "b"}))
    waiting.note((0, "u1"), frozenset({"c"}))  # a and b left the history, c came in
    assert waiting.take({"a", "b"}) == set()
    waiting.note((0, "u1"), frozenset())
    assert waiting.take({"c"}) == set() and len(waiting) == 0


def test_revoked_partitions_are_forgotten() -> None:
    waiting = WaitingUsers(max_users=10)
    waiting.note((0, "u1"), frozenset({"a"}))
    waiting.note((1, "u2"), frozenset({"a"}))
    waiting.drop([0, 7])
    assert waiting.take({"a"}) == {(1, "u2")}


def test_past_the_bound_users_are_not_held_and_the_set_says_so() -> None:
    waiting = WaitingUsers(max_users=2)
    for n in range(3):
        waiting.note((0, f"u{n}"), frozenset({"a"}))
    assert len(waiting) == 2 and waiting.overflowed
    waiting.note((0, "u0"), frozenset({"b"}))  # a held user is still updated
    assert waiting.waits_for((0, "u0")) == {"b"}
    waiting.clear()
    assert len(waiting) == 0 and not waiting.overflowed


OPS = st.one_of(
    st.tuples(st.just("note"), st.integers(0, 2), st.sampled_from(["u1", "u2", "u3"]),
              st.frozensets(st.sampled_from(ITEMS))),
    st.tuples(st.just("take"), st.frozensets(st.sampled_from(ITEMS))),
    st.tuples(st.just("drop"), st.frozensets(st.integers(0, 2))),
)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(OPS, max_size=40))
def test_it_behaves_like_a_plain_map_of_users(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    waiting = WaitingUsers(max_users=100)
    model: dict[UserKey, frozenset[str]] = {}
    for op in ops:
        if op[0] == "note":
            _, partition, user_id, missing = op
            waiting.note((partition, user_id), missing)
            model.pop((partition, user_id), None)
            if missing:
                model[(partition, user_id)] = missing
        elif op[0] == "take":
            expected = {user for user, missing in model.items() if missing & op[1]}
            assert waiting.take(op[1]) == expected
            for user in expected:
                del model[user]
        else:
            waiting.drop(op[1])
            model = {user: m for user, m in model.items() if user[0] not in op[1]}
        assert len(waiting) == len(model)
        assert all(waiting.waits_for(user) == missing for user, missing in model.items())
    assert waiting.take(ITEMS) == set(model)


def vector(item_id: str, version: str = "v1") -> events_pb2.ItemVector:
    return events_pb2.ItemVector(item_id=item_id, model_version=version,
                                 vector=[1.0, 0.0, 0.0])


def test_the_catalog_tells_which_items_got_their_first_vector() -> None:
    catalog = Catalog(model_version="v1", dim=3)
    catalog.put_vector(vector("a"))
    catalog.put_vector(vector("b", version="v0"))  # another version: ignored
    assert catalog.take_arrived() == {"a"}
    catalog.put_vector(vector("a"))  # a new vector of an item that had one
    assert catalog.take_arrived() == set()
    catalog.put_vector(vector("c"))
    catalog.switch("v2", 3, {"a": np.ones(3, np.float32)})  # the switch re-embeds everyone
    assert catalog.take_arrived() == set()
