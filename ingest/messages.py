"""Normalised rows -> the protobuf messages of docs/contracts.md."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd

from contracts.online import EVENT_TYPE_NUMBERS
from ingest.dataset import event_id
from protos import events_pb2

AVAILABILITY = {
    "": events_pb2.AVAILABILITY_UNSPECIFIED,
    "in_stock": events_pb2.IN_STOCK,
    "out_of_stock": events_pb2.OUT_OF_STOCK,
    "discontinued": events_pb2.DISCONTINUED,
}


def item_records(items: pd.DataFrame, updated_at_ms: int) -> Iterator[tuple[str, bytes]]:
    """``(key, value)`` for topic ``items``: key item_id, value an encoded `Item`."""
    for item_id, title, description, categories, price, availability in zip(
        items["item_id"],
        items["title"],
        items["description"],
        items["categories"],
        items["price"],
        items["availability"],
        strict=True,
    ):
        message = events_pb2.Item(
            item_id=item_id,
            title=title,
            description=description,
            categories=list(categories),
            price=float(price),
            availability=AVAILABILITY[availability],
            updated_at_ms=updated_at_ms,
        )
        yield item_id, message.SerializeToString()


def event_records(
    dataset_name: str, interactions: pd.DataFrame, shift_ms: int = 0
) -> Iterator[tuple[str, bytes]]:
    """``(key, value)`` for topic ``events``: key user_id, value an encoded `Event`.

    The event id comes from the source row and its original timestamp, so a shifted
    replay of the same rows repeats the same ids.
    """
    for row, user_id, item_id, timestamp_ms, event_type, value in zip(
        interactions["row"].tolist(),
        interactions["user_id"],
        interactions["item_id"],
        interactions["timestamp_ms"].tolist(),
        interactions["event_type"],
        interactions["value"].tolist(),
        strict=True,
    ):
        message = events_pb2.Event(
            event_id=event_id(dataset_name, row, user_id, item_id, timestamp_ms),
            user_id=user_id,
            item_id=item_id,
            type=EVENT_TYPE_NUMBERS[event_type],
            timestamp_ms=timestamp_ms + shift_ms,
            value=value,
        )
        yield user_id, message.SerializeToString()
