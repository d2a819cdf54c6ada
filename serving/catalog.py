"""The catalog as serving needs it: titles, categories and availability by item id."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from protos import events_pb2

_UNAVAILABLE = frozenset({events_pb2.OUT_OF_STOCK, events_pb2.DISCONTINUED})


@dataclass(frozen=True)
class CatalogEntry:
    """One item's display and filter fields."""

    title: str
    categories: tuple[str, ...]
    available: bool
    price: float
    category_keys: frozenset[str]  # the categories as filters compare them


def category_keys(categories: Iterable[str]) -> frozenset[str]:
    """The comparison form of category names: stripped, case-folded, empty ones dropped."""
    return frozenset(key for key in (name.strip().casefold() for name in categories) if key)


def entry_of(item: events_pb2.Item) -> CatalogEntry:
    """The entry of one ``Item`` message; unspecified availability counts as in stock."""
    return CatalogEntry(
        title=item.title,
        categories=tuple(item.categories),
        available=item.availability not in _UNAVAILABLE,
        price=item.price,
        category_keys=category_keys(item.categories),
    )


class Catalog:
    """Item id -> :class:`CatalogEntry`, kept equal to the compacted ``items`` topic."""

    def __init__(self) -> None:
        self._entries: dict[str, CatalogEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, item: events_pb2.Item) -> None:
        """Add or replace `item`."""
        self._entries[item.item_id] = entry_of(item)

    def remove(self, item_id: str) -> None:
        """Forget `item_id` (a tombstone on ``items``)."""
        self._entries.pop(item_id, None)

    def get(self, item_id: str) -> CatalogEntry | None:
        """The entry of `item_id`, or None when the catalog has not seen it."""
        return self._entries.get(item_id)
