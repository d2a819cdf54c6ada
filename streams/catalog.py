"""The whole catalog and the current model's item vectors, held in memory by every worker.

Filled by :mod:`streams.feed` from the compacted ``items`` and ``item-vectors`` topics,
and by the items agent as soon as it embeds an item.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from contracts.itemtext import item_text, text_hash
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
        # Per vector of the version in use: when it was made (ms; 0: unknown), and the
        # item text it was made from where known (by this worker), or its hash (recorded
        # by the version, for its stored vectors).
        self._made_at: dict[str, int] = {}
        self._texts: dict[str, str] = {}
        self._text_hashes: dict[str, int] = {}

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

    def switch(self, version: str, dim: int, vectors: dict[str, np.ndarray],
               made_at_ms: int = 0, text_hashes: Mapping[str, int] | None = None) -> None:
        """Use another model version: its stored vectors (made at `made_at_ms`, from the
        texts of `text_hashes`, where the version records them) replace every current one."""
        kept = {item_id: normalise(vector) for item_id, vector in vectors.items()
                if vector.shape == (dim,)}
        if len(kept) < len(vectors):
            log.warning("version %s: %s item vectors without dimension %s ignored",
                        version, len(vectors) - len(kept), dim)
        self.model_version, self.dim, self._vectors = version, dim, kept
        self._arrived = set()
        self._made_at = dict.fromkeys(kept, made_at_ms)
        self._texts = {}
        self._text_hashes = {item_id: h for item_id, h in (text_hashes or {}).items()
                             if item_id in kept}

    def reuse_vector(self, item: events_pb2.Item) -> bool:
        """Whether the item's vector of the version in use was made from this item's
        text, so the record (a price or availability change, or the same record read
        again) needs no embedding: the text it was made from is this one, or, that text
        unknown, the vector is newer than the item's last change. A trained version's
        vectors also carry what the training learned of the item: embedding its text
        again would lose that. When True, the text is noted as the vector's. The text a
        version's vector was made from is known by its hash where the version records
        it (so a record changed after training, with the same text, keeps the trained
        vector); else only by this worker's own embedding."""
        item_id = item.item_id
        if item_id not in self._vectors:
            return False
        text = item_text(item)
        known = self._texts.get(item_id)
        if known is None:
            stored = self._text_hashes.get(item_id)
            if stored is not None:
                same = stored == text_hash(text)
            else:
                same = 0 < item.updated_at_ms <= self._made_at.get(item_id, 0)
            if not same:
                return False
            self._texts[item_id] = text
            return True
        return known == text

    def put_item(self, item: events_pb2.Item) -> None:
        self._items[item.item_id] = item

    def remove_item(self, item_id: str) -> None:
        """A tombstone on ``items``: the item leaves the catalog with its vector."""
        self._items.pop(item_id, None)
        self._vectors.pop(item_id, None)
        self._made_at.pop(item_id, None)
        self._texts.pop(item_id, None)
        self._text_hashes.pop(item_id, None)

    def put_vector(self, item_vector: events_pb2.ItemVector, text: str | None = None) -> bool:
        """Keep the vector if it belongs to the model version in use; False if ignored.
        `text`: the item text it was made from; None keeps what was known only for the
        same vector again (this worker's own, read back from item-vectors)."""
        if item_vector.model_version != self.model_version:
            return False
        if len(item_vector.vector) != self.dim:
            log.warning(
                "item vector of %s has dim %s, expected %s; ignored",
                item_vector.item_id, len(item_vector.vector), self.dim,
            )
            return False
        item_id = item_vector.item_id
        vector = normalise(np.asarray(item_vector.vector, np.float32))
        before = self._vectors.get(item_id)
        if before is None:
            self._arrived.add(item_id)
        if text is not None:
            self._texts[item_id] = text
        elif before is None or not np.array_equal(before, vector):
            self._texts.pop(item_id, None)
        if before is None or not np.array_equal(before, vector):
            self._text_hashes.pop(item_id, None)  # no longer the version's stored vector
        self._vectors[item_id] = vector
        self._made_at[item_id] = item_vector.updated_at_ms
        return True
