"""User vectors: a decayed, weighted mean of the vectors of recently touched items."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from streams.history import Interaction

VectorLookup = Callable[[str], "np.ndarray | None"]


def decay_factors(timestamps_ms: np.ndarray, half_life_ms: float) -> np.ndarray:
    """``0.5 ** (age / half_life)`` with age measured from the newest timestamp."""
    ages = timestamps_ms.max() - timestamps_ms  # >= 0
    return np.power(0.5, ages / half_life_ms)


def user_vector(
    history: Sequence[Interaction], lookup: VectorLookup, *, half_life_ms: float
) -> np.ndarray | None:
    """L2-normalised float32 [dim] over the history items that have a vector, or None
    when none has one. Each item counts ``weight * decay``; decay is relative to the
    newest interaction in the history, with or without a vector."""
    if not history:
        return None
    timestamps = np.array([i.timestamp_ms for i in history], dtype=np.float64)
    scales = np.array([i.weight for i in history]) * decay_factors(timestamps, half_life_ms)
    found = [(row, lookup(i.item_id)) for row, i in enumerate(history)]
    rows = [row for row, vector in found if vector is not None]
    if not rows:
        return None
    matrix = np.stack([vector for _, vector in found if vector is not None])  # [n, dim]
    mean = scales[rows].astype(np.float32) @ matrix  # [dim]; dividing by the sum is moot
    norm = float(np.linalg.norm(mean))
    if norm < 1e-6 * float(scales[rows].sum()):
        return None  # the vectors cancel out: no direction to recommend from
    return (mean / norm).astype(np.float32)


def normalise(vector: np.ndarray) -> np.ndarray:
    """L2-normalised float32 copy; a zero vector stays zero."""
    vector = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector.copy()
