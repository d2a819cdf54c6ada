"""Pacing: timestamps and options -> waits between sends."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.errors import ReplayOptionError
from ingest.pacing import delays, is_paced, schedule


def test_real_time_gaps_are_divided_by_speedup_and_capped() -> None:
    timestamps = np.array([0, 1_000, 1_000, 61_000, 62_000])
    waits = delays(timestamps, speedup=2.0, max_gap_s=10.0)
    assert waits.tolist() == [0.0, 0.5, 0.0, 10.0, 0.5]
    assert schedule(waits).tolist() == [0.0, 0.5, 0.5, 10.5, 11.0]


def test_speedup_zero_never_waits() -> None:
    waits = delays(np.array([0, 10_000, 99_000]), speedup=0.0, max_gap_s=5.0)
    assert waits.tolist() == [0.0, 0.0, 0.0]
    assert not is_paced(0.0, None)


def test_rate_sets_a_minimum_wait() -> None:
    waits = delays(np.array([0, 0, 5_000, 5_100]), speedup=1.0, max_gap_s=2.0, rate=4.0)
    assert waits.tolist() == [0.0, 0.25, 2.0, 0.25]
    flat = delays(np.array([0, 1, 2]), speedup=0.0, max_gap_s=5.0, rate=100.0)
    assert flat.tolist() == [0.0, 0.01, 0.01]
    assert is_paced(0.0, 100.0)


def test_single_or_no_event() -> None:
    assert delays(np.array([5]), speedup=1.0, max_gap_s=1.0).tolist() == [0.0]
    assert delays(np.array([], dtype=np.int64), speedup=1.0, max_gap_s=1.0).tolist() == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"speedup": -1.0, "max_gap_s": 1.0}, "--speedup"),
        ({"speedup": 1.0, "max_gap_s": -1.0}, "--max-gap-s"),
        ({"speedup": 1.0, "max_gap_s": 1.0, "rate": 0.0}, "--rate"),
    ],
)
def test_bad_options(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ReplayOptionError, match=message):
        delays(np.array([0, 1]), **kwargs)
