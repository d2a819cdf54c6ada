"""Which items a request may be shown: exclusions, availability, categories and price."""

from __future__ import annotations

from dataclasses import dataclass

from serving.catalog import CatalogEntry


@dataclass(frozen=True)
class Filters:
    """What one request rules out.

    ``excluded`` holds item ids never returned (the request's list, the user's seen
    items, the query item itself); the index leaves them out inside its search, and
    :meth:`allows` checks them again for other sources (popular items). Category sets
    hold case-folded names (:func:`serving.catalog.category_keys`). An item the catalog
    does not know has no categories and no price: it fails a non-empty include filter
    and any price bound, and passes the exclude filter.
    """

    excluded: frozenset[str] = frozenset()
    include_categories: frozenset[str] = frozenset()
    exclude_categories: frozenset[str] = frozenset()
    min_price: float | None = None
    max_price: float | None = None

    @property
    def narrows(self) -> bool:
        """True when catalog fields (categories, price) may reject nearest neighbours, so
        the search window should start wider."""
        return bool(self.include_categories or self.exclude_categories
                    or self.min_price is not None or self.max_price is not None)

    def allows(self, item_id: str, entry: CatalogEntry | None) -> bool:
        """True when `item_id` (with catalog `entry`) may be recommended."""
        if item_id in self.excluded:
            return False
        if entry is not None and not entry.available:
            return False
        if self.min_price is not None or self.max_price is not None:
            if entry is None:
                return False
            if self.min_price is not None and entry.price < self.min_price:
                return False
            if self.max_price is not None and entry.price > self.max_price:
                return False
        if not (self.include_categories or self.exclude_categories):
            return True
        keys = entry.category_keys if entry is not None else frozenset()
        if self.include_categories and self.include_categories.isdisjoint(keys):
            return False
        return self.exclude_categories.isdisjoint(keys)
