"""streams.text: the item text contract."""

from __future__ import annotations

from protos import events_pb2
from streams.text import item_text


def test_all_parts() -> None:
    item = events_pb2.Item(
        item_id="1", title="Toy Story (1995)", categories=["Animation", "Comedy"],
        description="Toys come alive.",
    )
    assert item_text(item) == "Toy Story (1995). Animation, Comedy. Toys come alive."


def test_empty_parts_and_their_separators_are_left_out() -> None:
    assert item_text(events_pb2.Item(title="Heat (1995)")) == "Heat (1995)"
    assert item_text(events_pb2.Item(title="Heat", description="Cops.")) == "Heat. Cops."
    assert item_text(events_pb2.Item(categories=["Drama", " "])) == "Drama"
    assert item_text(events_pb2.Item(item_id="x")) == ""


def test_parts_are_stripped() -> None:
    item = events_pb2.Item(title="  Heat ", categories=[" Crime "], description=" Cops. ")
    assert item_text(item) == "Heat. Crime. Cops."
