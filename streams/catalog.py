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
        self._arrived: set[str] = set()  # items that got their first vector, until taken

    def __len__(self) -> int:
        return len(self._items)

    def item(self, item_id: str) -> events_pb2.Item | None:
        return self._items.get(item_id)

    def vector(self, item_id: str) -> np.ndarray | None:
        """float32 [dim], L2-normalised, of the current model version; None if not embedded."""
        return self._vectors.get(item_id)

    def vector_count(self) -> int:
        return len(self._vectors)

    def vectors(self) -> dict[str, np.ndarray]:
        """The current version's vectors. A switch replaces this mapping rather than
        changing it, so a holder keeps a single version's vectors throughout."""
        return self._vectors

    def items_without_vector(self) -> list[events_pb2.Item]:
        return [item for item_id, item in self._items.items() if item_id not in self._vectors]

    def take_arrived(self) -> set[str]:
        """Items that got a vector of the version in use, where they had none, since the
        last call (from item-vectors or this worker's items agent)."""
        arrived, self._arrived = self._arrived, set()
        return arrived

    def switch(self, version: str, dim: int, vectors: dict[str, np.ndarray]) -> None:
        """Use another model version: its stored vectors replace every current one."""
        kept = {item_id: normalise(vector) for item_id, vector in vectors.items()
                if vector.shape == (dim,)}
        if len(kept) < len(vectors):
            log.warning("version %s: %s item vectors without dimension %s ignored",
                        version, len(vectors) - len(kept), dim)
        self.model_version, self.dim, self._vectors = version, dim, kept
        self._arrived = set()

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
        if item_vector.item_id not in self._vectors:
            self._arrived.add(item_vector.item_id)
        self._vectors[item_vector.item_id] = normalise(np.asarray(item_vector.vector, np.float32))
        return True
