"""Normalised rows -> protobuf records of the contract."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ingest.dataset import event_id
from ingest.messages import event_records, item_records
from protos import events_pb2


def test_item_records() -> None:
    items = pd.DataFrame(
        {
            "item_id": ["a"],
            "title": ["Shoe"],
            "description": ["Red"],
            "categories": [["Shoes", "Red"]],
            "price": [9.5],
            "availability": ["out_of_stock"],
        }
    )
    [(key, value)] = list(item_records(items, updated_at_ms=123))
    item = events_pb2.Item.FromString(value)
    assert key == "a"
    assert (item.item_id, item.title, item.description) == ("a", "Shoe", "Red")
    assert list(item.categories) == ["Shoes", "Red"]
    assert item.price == 9.5
    assert item.availability == events_pb2.OUT_OF_STOCK
    assert item.updated_at_ms == 123


def test_event_records_keep_ids_when_shifted() -> None:
    interactions = pd.DataFrame(
        {
            "row": np.array([4, 2], dtype=np.int64),
            "user_id": ["u1", "u2"],
            "item_id": ["a", "b"],
            "timestamp_ms": np.array([1_000, 2_000], dtype=np.int64),
            "event_type": ["rating", "add_to_cart"],
            "value": [4.0, 1.0],
        }
    )
    plain = [(key, events_pb2.Event.FromString(value)) for key, value in event_records("d", interactions)]
    shifted = [events_pb2.Event.FromString(value) for _, value in event_records("d", interactions, 500)]
    assert [key for key, _ in plain] == ["u1", "u2"]
    first = plain[0][1]
    assert first.event_id == event_id("d", 4, "u1", "a", 1_000)
    assert (first.user_id, first.item_id, first.type, first.value) == ("u1", "a", events_pb2.RATING, 4.0)
    assert plain[1][1].type == events_pb2.ADD_TO_CART
    assert [event.timestamp_ms for event in shifted] == [1_500, 2_500]
    assert [event.event_id for event in shifted] == [event.event_id for _, event in plain]
