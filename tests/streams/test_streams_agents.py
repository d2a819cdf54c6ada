"""streams.agents: which records of a batch the events handler takes."""

from __future__ import annotations

from dataclasses import dataclass

from faust.types.tuples import Message

from streams.agents import new_records


@dataclass
class Event:
    """What the handler reads of a Faust event."""

    message: Message


def event(partition: int, offset: int) -> Event:
    return Event(Message("ev", partition, offset, 0.0, 0, None, b"u1", b"v", None))


def test_records_handed_over_again_are_taken_once() -> None:
    batch = [event(0, 7), event(1, 3), event(0, 8), event(0, 7), event(0, 5), event(1, 3)]
    handled = {(0, 5)}  # sent before this batch
    records = new_records(batch, handled=lambda p, o: (p, o) in handled)  # type: ignore[arg-type]
    assert [(r.partition, r.offset) for r in records] == [(0, 7), (1, 3), (0, 8)]
