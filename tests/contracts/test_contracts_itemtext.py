"""contracts.itemtext: the item text every deployable embeds."""

from __future__ import annotations

import pytest

from contracts.itemtext import item_text, text_of
from protos import events_pb2


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


@pytest.mark.parametrize(
    ("title", "categories", "description", "expected"),
    [
        ("Toy Story", ["Animation", "Comedy"], "Released in 1995",
         "Toy Story. Animation, Comedy. Released in 1995"),
        ("Toy Story", [], "Released in 1995", "Toy Story. Released in 1995"),
        ("Hat", ["Clothing"], "", "Hat. Clothing"),
        ("Hat", [], "", "Hat"),
    ],
)
def test_text_of_fields(title: str, categories: list[str], description: str, expected: str) -> None:
    assert text_of(title, categories, description) == expected
    item = events_pb2.Item(title=title, categories=categories, description=description)
    assert item_text(item) == expected  # a catalog item and a dataset row: one recipe
