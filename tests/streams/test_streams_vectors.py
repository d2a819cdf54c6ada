"""streams.vectors: the user vector (weights, decay, normalisation)."""

from __future__ import annotations

import numpy as np
import pytest

from streams.history import Interaction
from streams.vectors import decay_factors, normalise, user_vector

HOUR_MS = 3_600_000.0
A = np.array([1.0, 0.0, 0.0], dtype=np.float32)
B = np.array([0.0, 1.0, 0.0], dtype=np.float32)
VECTORS = {"a": A, "b": B}


def at(item: str, ts: float, weight: float = 1.0) -> Interaction:
    return Interaction(item, 1, int(ts), weight)


def vector(history: list[Interaction], half_life_ms: float = HOUR_MS) -> np.ndarray:
    result = user_vector(history, VECTORS.get, half_life_ms=half_life_ms)
    assert result is not None
    return result


def test_result_is_unit_length_float32() -> None:
    result = vector([at("a", 0, 3.0), at("b", 0, 1.0)])
    assert result.dtype == np.float32
    assert np.linalg.norm(result) == pytest.approx(1.0, abs=1e-6)


def test_weights_decide_the_direction() -> None:
    result = vector([at("a", 0, 3.0), at("b", 0, 1.0)])
    assert result[0] / result[1] == pytest.approx(3.0, rel=1e-5)


def test_decay_halves_each_half_life_from_the_newest_event() -> None:
    result = vector([at("a", 0), at("b", HOUR_MS)])  # a is one half-life older
    assert result[1] / result[0] == pytest.approx(2.0, rel=1e-5)
    two = vector([at("a", 0), at("b", 2 * HOUR_MS)])
    assert two[1] / two[0] == pytest.approx(4.0, rel=1e-5)


def test_decay_is_relative_to_the_newest_not_to_now() -> None:
    old = vector([at("a", 0), at("b", HOUR_MS)])
    shifted = vector([at("a", 1e12), at("b", 1e12 + HOUR_MS)])
    np.testing.assert_allclose(old, shifted, rtol=1e-6)


def test_newest_item_without_vector_still_sets_the_reference_time() -> None:
    only_a = vector([at("a", 0), at("missing", HOUR_MS)])
    np.testing.assert_allclose(only_a, A)  # direction unchanged: one vector left
    mixed = vector([at("a", 0), at("b", 0, 1.0), at("missing", 10 * HOUR_MS)])
    np.testing.assert_allclose(mixed, normalise(A + B), rtol=1e-6)


def test_none_without_usable_vectors() -> None:
    assert user_vector([], VECTORS.get, half_life_ms=HOUR_MS) is None
    assert user_vector([at("missing", 0)], VECTORS.get, half_life_ms=HOUR_MS) is None
    opposite = {"a": A, "neg": -A}
    assert user_vector([at("a", 0), at("neg", 0)], opposite.get, half_life_ms=HOUR_MS) is None


def test_decay_factors() -> None:
    factors = decay_factors(np.array([0.0, 50.0, 100.0]), half_life_ms=50.0)
    np.testing.assert_allclose(factors, [0.25, 0.5, 1.0])


def test_normalise() -> None:
    np.testing.assert_allclose(normalise(np.array([3.0, 4.0])), [0.6, 0.8])
    np.testing.assert_array_equal(normalise(np.zeros(2)), [0.0, 0.0])
