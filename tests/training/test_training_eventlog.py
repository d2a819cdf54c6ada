"""Offset range planning of the log reader."""

from __future__ import annotations

import pytest

from training.errors import LogReadError
from training.eventlog import count, plan_ranges


def test_whole_log_from_the_beginning() -> None:
    ranges = plan_ranges({0: 0, 1: 5}, {0: 10, 1: 8}, {}, max_events=100)
    assert ranges == {0: (0, 10), 1: (5, 8)}
    assert count(ranges) == 13


def test_start_offsets_are_clamped_into_the_log() -> None:
    ranges = plan_ranges({0: 2, 1: 0, 2: 0}, {0: 10, 1: 8, 2: 4}, {0: 0, 1: 6, 2: 9}, max_events=100)
    assert ranges == {0: (2, 10), 1: (6, 8), 2: (4, 4)}


def test_max_events_keeps_the_newest_in_proportion() -> None:
    ranges = plan_ranges({0: 0, 1: 0}, {0: 10, 1: 30}, {}, max_events=20)
    assert ranges == {0: (5, 10), 1: (15, 30)}
    assert count(ranges) == 20


def test_leftover_goes_to_largest_remainders_then_lower_partition() -> None:
    ranges = plan_ranges({0: 0, 1: 0, 2: 0}, {0: 1, 1: 1, 2: 1}, {}, max_events=2)
    assert ranges == {0: (0, 1), 1: (0, 1), 2: (1, 1)}
    uneven = plan_ranges({0: 0, 1: 0, 2: 0}, {0: 3, 1: 3, 2: 4}, {}, max_events=5)
    # shares 1.5, 1.5, 2.0 -> floors 1, 1, 2; one left over, tie between 0 and 1 -> 0
    assert uneven == {0: (1, 3), 1: (2, 3), 2: (2, 4)}
    assert count(uneven) == 5


def test_empty_topic_gives_empty_ranges() -> None:
    assert plan_ranges({0: 7, 1: 0}, {0: 7, 1: 0}, {}, max_events=10) == {0: (7, 7), 1: (0, 0)}


def test_unknown_partition_and_bad_limit() -> None:
    with pytest.raises(LogReadError, match=r"partitions \[3\]"):
        plan_ranges({0: 0}, {0: 1}, {3: 0}, max_events=10)
    with pytest.raises(LogReadError, match="max_events"):
        plan_ranges({0: 0}, {0: 1}, {}, max_events=0)
