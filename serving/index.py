"""Nearest items by inner product over L2-normalised vectors (cosine similarity).

Item ids are strings outside and int64 FAISS ids inside. The FAISS index is built in
:func:`_new_faiss_index` only: an approximate index (IVF with a direct map, HNSW) is a
change there, as long as it supports ``add_with_ids``, ``remove_ids`` and ``reconstruct``.
Every method holds one lock, so searches may run in worker threads next to upserts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import faiss
import numpy as np

_EPS = 1e-12


def _new_faiss_index(dim: int) -> faiss.Index:
    """Exact search; IndexIDMap2 keeps a reverse map so ids can be removed and reconstructed."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _selector(faiss_ids: list[int]) -> faiss.IDSelector:
    return faiss.IDSelectorBatch(np.asarray(faiss_ids, dtype=np.int64))


def normalise(vectors: np.ndarray, dim: int) -> np.ndarray:
    """`vectors` as C-contiguous float32 [n, dim] rows of unit length.

    Raises ValueError for a wrong shape, non-finite values or an all-zero row.
    """
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("vectors contain NaN or infinity")
    norms = np.linalg.norm(array, axis=1, keepdims=True)  # [n, 1]
    if (norms < _EPS).any():
        raise ValueError("a vector is all zeros")
    return np.ascontiguousarray(array / norms, dtype=np.float32)


class ItemIndex:
    """Items by vector; ``search`` answers the most similar items first."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._index = _new_faiss_index(dim)
        self._ids: dict[str, int] = {}  # item id -> FAISS id
        self._items: dict[int, str] = {}  # FAISS id -> item id
        self._next_id = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._ids

    def upsert(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add or replace the vectors of `item_ids` (row i belongs to item_ids[i]).

        A later row wins over an earlier one with the same item id.
        """
        rows = normalise(vectors, self.dim)  # [n, dim]
        if rows.shape[0] != len(item_ids):
            raise ValueError(f"{len(item_ids)} item ids for {rows.shape[0]} vectors")
        last_row = {item_id: row for row, item_id in enumerate(item_ids)}  # dedupe, last wins
        if not last_row:
            return
        with self._lock:
            replaced = [self._ids[item_id] for item_id in last_row if item_id in self._ids]
            if replaced:
                self._index.remove_ids(_selector(replaced))
            faiss_ids = np.fromiter(
                (self._faiss_id(item_id) for item_id in last_row), dtype=np.int64, count=len(last_row)
            )
            self._index.add_with_ids(rows[list(last_row.values())], faiss_ids)

    def remove(self, item_ids: Iterable[str]) -> int:
        """Drop `item_ids` from the index; unknown ids are ignored. Returns how many went."""
        with self._lock:
            gone = [self._ids.pop(item_id) for item_id in set(item_ids) if item_id in self._ids]
            for faiss_id in gone:
                del self._items[faiss_id]
            if gone:
                self._index.remove_ids(_selector(gone))
        return len(gone)

    def vector(self, item_id: str) -> np.ndarray | None:
        """The stored unit vector of `item_id` [dim], or None when it is not indexed."""
        with self._lock:
            faiss_id = self._ids.get(item_id)
            if faiss_id is None:
                return None
            return np.asarray(self._index.reconstruct(faiss_id), dtype=np.float32)

    def search(
        self, query_vectors: np.ndarray, k: int
    ) -> tuple[list[np.ndarray], list[list[str]]]:
        """The up-to-`k` most similar items per query row, best first.

        Returns ``(scores, item_ids)``: per query, cosine similarities (float32) and the
        matching item ids; fewer than `k` when the index holds fewer items.
        """
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        xq = normalise(query_vectors, self.dim)  # [nq, dim]
        with self._lock:
            if not self._ids:
                return [np.empty(0, np.float32) for _ in xq], [[] for _ in xq]
            D, I = self._index.search(xq, min(k, len(self._ids)))  # [nq, k'] each
            items = self._items
            scores: list[np.ndarray] = []
            item_ids: list[list[str]] = []
            for distances, labels in zip(D, I, strict=True):
                valid = labels >= 0  # an approximate index may return fewer than k'
                scores.append(distances[valid].astype(np.float32, copy=False))
                item_ids.append([items[int(label)] for label in labels[valid]])
        return scores, item_ids

    def _faiss_id(self, item_id: str) -> int:
        """The FAISS id of `item_id`, assigning a fresh one on first sight (lock held)."""
        faiss_id = self._ids.get(item_id)
        if faiss_id is None:
            faiss_id = self._next_id
            self._next_id += 1
            self._ids[item_id] = faiss_id
            self._items[faiss_id] = item_id
        return faiss_id
