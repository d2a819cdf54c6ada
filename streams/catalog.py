"""The whole catalog and the current model's item vectors, held in memory by every worker.

Filled by :mod:`streams.feed` from the compacted ``items`` and ``item-vectors`` topics,
and by the items agent as soon as it embeds an item.
"""

from __future__ import annotations

import logging

import numpy as np

from protos import events_pb2
from streams.vectors import normalise

log = logging.getLogger(__name__)


class Catalog:
    """Items by id and, for the model version in use, their vectors."""

    def __init__(self, *, model_version: str, dim: int) -> None:
        self.model_version = model_version
        self.dim = dim
        self._items: dict[str, events_pb2.Item] = {}
        self._vectors: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._items)

    def item(self, item_id: str) -> events_pb2.Item | None:
        return self._items.get(item_id)

    def vector(self, item_id: str) -> np.ndarray | None:
        """float32 [dim], L2-normalised, of the current model version; None if not embedded."""
        return self._vectors.get(item_id)

    def vector_count(self) -> int:
        return len(self._vectors)

    def put_item(self, item: events_pb2.Item) -> None:
        self._items[item.item_id] = item

    def remove_item(self, item_id: str) -> None:
        """A tombstone on ``items``: the item leaves the catalog with its vector."""
        self._items.pop(item_id, None)
        self._vectors.pop(item_id, None)

    def put_vector(self, item_vector: events_pb2.ItemVector) -> bool:
        """Keep the vector if it belongs to the model version in use; False if ignored."""
        if item_vector.model_version != self.model_version:
            return False
        if len(item_vector.vector) != self.dim:
            log.warning(
                "item vector of %s has dim %s, expected %s; ignored",
                item_vector.item_id, len(item_vector.vector), self.dim,
            )
            return False
        self._vectors[item_vector.item_id] = normalise(np.asarray(item_vector.vector))
        return True
