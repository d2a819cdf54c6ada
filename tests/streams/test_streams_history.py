"""streams.history: weights, folding (order, cap), dedupe memory, encoding."""

from __future__ import annotations

import pytest

from protos import events_pb2
from streams.history import (
    Interaction,
    UserState,
    accepted_offset,
    decode_state,
    encode_state,
    fold,
    interaction_weight,
    weights_by_type,
)
from streams.settings import DEFAULT_WEIGHTS

WEIGHTS = weights_by_type(DEFAULT_WEIGHTS)


def add(state: UserState, item: str, ts: int, *, offset: int, history: int = 3,
        window: int = 4) -> UserState:
    return fold(
        state,
        Interaction(item, events_pb2.VIEW, ts, 1.0),
        event_id=f"e{offset}",
        offset=offset,
        history_length=history,
        dedupe_window=window,
    )


def test_default_weights_order() -> None:
    weight = {kind: interaction_weight(kind, 0.0, WEIGHTS) for kind in WEIGHTS}
    assert weight[events_pb2.PURCHASE] > weight[events_pb2.ADD_TO_CART] > weight[events_pb2.CLICK]
    assert weight[events_pb2.CLICK] > weight[events_pb2.RATING]
    assert weight[events_pb2.RATING] == weight[events_pb2.VIEW] == 1.0


def test_rating_scales_with_value_other_types_do_not() -> None:
    assert interaction_weight(events_pb2.RATING, 4.0, WEIGHTS) == 4.0
    assert interaction_weight(events_pb2.RATING, -1.0, WEIGHTS) == 1.0
    assert interaction_weight(events_pb2.PURCHASE, 3.0, WEIGHTS) == 5.0


def test_configured_weights_are_used() -> None:
    weights = weights_by_type({**DEFAULT_WEIGHTS, "click": 7.5})
    assert interaction_weight(events_pb2.CLICK, 0.0, weights) == 7.5


def test_fold_appends_and_caps_to_newest() -> None:
    state = UserState()
    for offset, ts in enumerate([10, 20, 30, 40]):
        state = add(state, f"i{offset}", ts, offset=offset)
    assert [i.item_id for i in state.history] == ["i1", "i2", "i3"]
    assert [i.timestamp_ms for i in state.history] == [20, 30, 40]


def test_out_of_order_event_is_placed_by_event_time() -> None:
    state = add(add(UserState(), "a", 10, offset=0), "b", 30, offset=1)
    state = add(state, "late", 20, offset=2)
    assert [i.item_id for i in state.history] == ["a", "late", "b"]
    # Older than everything in a full history: accepted, but falls out at once.
    state = add(state, "ancient", 5, offset=3)
    assert [i.item_id for i in state.history] == ["a", "late", "b"]


def test_equal_times_keep_arrival_order() -> None:
    state = add(add(UserState(), "first", 10, offset=0), "second", 10, offset=1)
    assert [i.item_id for i in state.history] == ["first", "second"]


def test_fold_does_not_change_the_old_state() -> None:
    before = add(UserState(), "a", 10, offset=0)
    add(before, "b", 20, offset=1)
    assert [i.item_id for i in before.history] == ["a"]


def test_accepted_ids_are_remembered_with_offsets_and_bounded() -> None:
    state = UserState()
    for offset in range(6):
        state = add(state, "i", 10 + offset, offset=offset, window=4)
    assert accepted_offset(state, "e5") == 5
    assert accepted_offset(state, "e2") == 2
    assert accepted_offset(state, "e1") is None  # beyond the window
    assert len(state.accepted) == 4


@pytest.mark.parametrize("state", [UserState(), None])
def test_encoding_round_trip(state: UserState | None) -> None:
    if state is None:
        state = add(add(UserState(), "Toy Story (1995)", 10, offset=7), "ü", 20, offset=9)
    assert decode_state(encode_state(state)) == state


def test_no_data_is_the_empty_state() -> None:
    assert decode_state(None) == UserState()
    assert decode_state(b"") == UserState()
