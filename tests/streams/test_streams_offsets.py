"""streams.events.offsets: handled and next offsets of the partitions of events."""

from __future__ import annotations

from streams.events.offsets import PartitionOffsets


def test_records_below_the_resume_point_or_processed_are_handled() -> None:
    offsets = PartitionOffsets()
    offsets.start_at(0, 10)
    assert offsets.handled(0, 9) and not offsets.handled(0, 10)
    assert not offsets.handled(1, 0)  # a partition without a start: nothing handled
    offsets.processed(0, 12)
    assert offsets.handled(0, 12) and not offsets.handled(0, 13)
    offsets.processed(0, 11)  # an older record never moves it back
    assert not offsets.handled(0, 13)


def test_take_gives_each_partitions_next_offset_once() -> None:
    offsets = PartitionOffsets()
    assert not offsets.pending()
    offsets.processed(0, 4)
    offsets.processed(2, 7)
    assert offsets.pending()
    assert offsets.take() == {0: 5, 2: 8}
    assert not offsets.pending() and offsets.take() == {}
    assert offsets.handled(0, 4)  # committed: still handled


def test_a_closed_partition_commits_nothing_and_a_lost_one_is_read_again() -> None:
    offsets = PartitionOffsets()
    offsets.processed(0, 4)
    offsets.processed(1, 4)
    offsets.closed(0)
    assert offsets.take() == {1: 5}
    assert offsets.handled(0, 4)
    offsets.lost(0)  # fenced: its open transaction is gone, its records are read again
    assert not offsets.handled(0, 4)
