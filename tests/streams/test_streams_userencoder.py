"""streams.userencoder: the user tower's inputs, and the weighted mean, without Kafka."""

from __future__ import annotations

import numpy as np

from protos import events_pb2
from streams.history import Interaction
from streams.userencoder import WeightedMean, tower_inputs
from streams.vectors import user_vector

VECTORS = {"a": np.array([1.0, 0.0], np.float32), "b": np.array([0.0, 1.0], np.float32)}


def seen(item: str, ts: int, kind: int = events_pb2.CLICK) -> Interaction:
    return Interaction(item, kind, ts, 2.0)


def test_inputs_are_left_padded_newest_last() -> None:
    histories = [
        [seen("a", 1_000, events_pb2.VIEW), seen("gone", 2_000), seen("b", 4_000)],
        [seen("gone", 5_000)],  # no item with a vector: no row
        [seen("a", k * 1_000) for k in range(5)],
    ]
    inputs = tower_inputs(histories, VECTORS.get, max_len=3, dim=2)
    assert inputs.rows == [0, 2]
    np.testing.assert_array_equal(inputs.mask, [[False, True, True], [True, True, True]])
    np.testing.assert_array_equal(inputs.item_vectors[0], [[0, 0], [1, 0], [0, 1]])
    np.testing.assert_array_equal(inputs.event_types[0], [0, events_pb2.VIEW, events_pb2.CLICK])
    np.testing.assert_array_equal(inputs.gaps_s[0], [0.0, 3.0, 0.0])
    np.testing.assert_array_equal(inputs.gaps_s[1], [2.0, 1.0, 0.0])  # the newest 3 of 5
    assert inputs.item_vectors.dtype == np.float32 and inputs.event_types.dtype == np.int64


def test_gaps_count_from_the_newest_event_even_without_a_vector() -> None:
    inputs = tower_inputs([[seen("a", 1_000), seen("gone", 3_000)]], VECTORS.get,
                          max_len=2, dim=2)
    np.testing.assert_array_equal(inputs.gaps_s, [[0.0, 2.0]])


def test_weighted_mean_is_the_user_vector_of_each_history() -> None:
    histories = [[seen("a", 0), seen("b", 3_600_000)], [seen("gone", 1)]]
    vectors = WeightedMean(3_600_000.0).encode(histories, VECTORS.get)
    want = user_vector(histories[0], VECTORS.get, half_life_ms=3_600_000.0)
    assert want is not None and vectors[1] is None
    np.testing.assert_allclose(vectors[0], want)
