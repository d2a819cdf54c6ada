"""Nearest items by inner product over L2-normalised vectors (cosine similarity).

Item ids are strings outside and int64 FAISS ids inside. Two kinds of FAISS index, chosen
by catalog size (:func:`index_kind`):

- ``flat``: ``IndexIDMap2(IndexFlatIP)``, exact; fine up to tens of thousands of items.
- ``ivf``: ``IndexIVFFlat`` with a hashtable direct map, approximate; adds in ~85 µs and
  removes in ~12 µs at 1M items, so live upserts stay cheap (HNSW cannot remove).

Exclusions (seen and excluded items) never eat into the k results: a search fetches one
more neighbour per excluded item and drops them (cheaper than a FAISS id selector, which
is checked against every scanned vector, and it lets queries with different exclusions
share one FAISS call). Every method holds one lock, so searches may run in worker
threads (FAISS releases the GIL) next to upserts.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Collection, Iterable, Sequence
from typing import Literal

import faiss
import numpy as np

log = logging.getLogger(__name__)

_EPS = 1e-12
IndexKind = Literal["flat", "ivf"]


def index_kind(n_items: int, ivf_threshold: int) -> IndexKind:
    """Exact search below `ivf_threshold` items, IVF at or above it."""
    return "ivf" if n_items >= ivf_threshold else "flat"


def ivf_lists(n_items: int) -> int:
    """Inverted lists for `n_items`: 4·√N (MEASUREMENTS.md: recall 1.0 at nprobe 8, 1M)."""
    return max(1, int(4 * math.sqrt(max(n_items, 1))))


def _remove(index: faiss.Index, faiss_ids: Collection[int]) -> None:
    """Remove ids; an IVF hashtable direct map accepts only an IDSelectorArray."""
    array = np.fromiter(faiss_ids, dtype=np.int64, count=len(faiss_ids))
    index.remove_ids(faiss.IDSelectorArray(len(array), faiss.swig_ptr(array)))


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


def _trained_ivf(dim: int, training: np.ndarray, nprobe: int) -> faiss.Index:
    """An empty IVFFlat trained on `training` [n, dim] rows, with a hashtable direct map."""
    nlist = ivf_lists(len(training))
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.own_fields = True
    quantizer.this.disown()  # type: ignore[attr-defined]  # the IVF index frees it
    sample = training
    most = 64 * nlist  # k-means needs ~40-256 points per list; more only costs time
    if len(training) > most:
        rows = np.random.default_rng(0).choice(len(training), size=most, replace=False)
        sample = training[np.sort(rows)]
    ivf.train(sample)
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
    ivf.nprobe = nprobe
    return ivf


class ItemIndex:
    """Items by vector; ``search`` answers the most similar items first."""

    def __init__(self, dim: int, *, kind: IndexKind = "flat", nprobe: int = 8,
                 training: np.ndarray | None = None) -> None:
        """An empty index; an ``ivf`` one is trained on `training` rows [n, dim] first."""
        self.dim = dim
        self.kind: IndexKind = kind
        self.nprobe = nprobe
        if kind == "ivf":
            if training is None or len(training) == 0:
                raise ValueError("an ivf index needs training vectors")
            self._index = _trained_ivf(dim, normalise(training, dim), nprobe)
        else:
            self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._ids: dict[str, int] = {}  # item id -> FAISS id
        self._items: list[str | None] = []  # FAISS id -> item id (None once removed)
        self._lock = threading.Lock()

    @classmethod
    def build(cls, dim: int, item_ids: Sequence[str], vectors: np.ndarray, *,
              ivf_threshold: int, nprobe: int) -> ItemIndex:
        """An index of the kind that suits the catalog size, holding `vectors`."""
        kind = index_kind(len(item_ids), ivf_threshold)
        rows = normalise(vectors, dim) if len(item_ids) else np.empty((0, dim), np.float32)
        index = cls(dim, kind=kind, nprobe=nprobe, training=rows if kind == "ivf" else None)
        if len(item_ids):
            index.upsert(item_ids, rows)
        log.info("%s index of %s items (dimension %s)", kind, len(index), dim)
        return index

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
                _remove(self._index, replaced)
            faiss_ids = np.fromiter(
                (self._faiss_id(item_id) for item_id in last_row), dtype=np.int64, count=len(last_row)
            )
            if len(last_row) == len(item_ids):
                self._index.add_with_ids(rows, faiss_ids)
            else:
                self._index.add_with_ids(rows[list(last_row.values())], faiss_ids)

    def remove(self, item_ids: Iterable[str]) -> int:
        """Drop `item_ids` from the index; unknown ids are ignored. Returns how many went."""
        with self._lock:
            gone = [self._ids.pop(item_id) for item_id in set(item_ids) if item_id in self._ids]
            for faiss_id in gone:
                self._items[faiss_id] = None
            if gone:
                _remove(self._index, gone)
        return len(gone)

    def vector(self, item_id: str) -> np.ndarray | None:
        """The stored unit vector of `item_id` [dim], or None when it is not indexed."""
        found, matrix = self.vectors([item_id])
        return matrix[0] if found else None

    def vectors(self, item_ids: Iterable[str]) -> tuple[list[str], np.ndarray]:
        """The indexed ones of `item_ids` and their unit vectors [n_found, dim]."""
        get = self._ids.get
        with self._lock:
            pairs = [(item_id, key) for item_id in item_ids if (key := get(item_id)) is not None]
            if not pairs:
                return [], np.empty((0, self.dim), dtype=np.float32)
            keys = np.array([key for _, key in pairs], dtype=np.int64)
            matrix = self._index.reconstruct_batch(keys)  # [n_found, dim], one call into FAISS
        return [item_id for item_id, _ in pairs], np.asarray(matrix, dtype=np.float32)

    def search(
        self, query_vectors: np.ndarray, k: int, exclude: Collection[str] = ()
    ) -> tuple[list[np.ndarray], list[list[str]]]:
        """The up-to-`k` most similar items per query row, best first, never one of `exclude`.

        Returns ``(scores, item_ids)``: per query, cosine similarities (float32) and the
        matching item ids; fewer than `k` when the index holds fewer items.
        """
        rows = len(query_vectors) if np.ndim(query_vectors) == 2 else 1
        found = self.search_each(query_vectors, [k] * rows, [exclude] * rows)
        return [scores for scores, _ in found], [item_ids for _, item_ids in found]

    def search_each(
        self, query_vectors: np.ndarray, ks: Sequence[int], excludes: Sequence[Collection[str]]
    ) -> list[tuple[np.ndarray, list[str]]]:
        """Query row i's up-to-``ks[i]`` most similar items, never one of ``excludes[i]``,
        as ``(scores, item_ids)`` pairs, in one FAISS call for all rows.

        Each row fetches its k plus one per excluded item, so exclusions never eat into
        the k results; the excluded ones are dropped from what comes back.
        """
        if any(k < 1 for k in ks):
            raise ValueError(f"k must be positive, got {min(ks)}")
        xq = normalise(query_vectors, self.dim)  # [nq, dim]
        if not len(ks) == len(excludes) == len(xq):
            raise ValueError("one k and one exclusion set per query row")
        nothing: tuple[np.ndarray, list[str]] = (np.empty(0, np.float32), [])
        with self._lock:
            n = len(self._ids)
            if n == 0:
                return [nothing for _ in xq]
            fetch = min(n, max(k + len(excluded) for k, excluded in zip(ks, excludes)))
            D, I = self._index.search(xq, fetch)  # [nq, fetch] each
            items = self._items
            found: list[tuple[np.ndarray, list[str]]] = []
            for distances, labels, k, excluded in zip(D, I, ks, excludes, strict=True):
                # An approximate index may return fewer than asked (label -1, at the end).
                named = [items[label] for label in labels.tolist() if label >= 0]
                kept = [n for n, item_id in enumerate(named)
                        if item_id is not None and item_id not in excluded][:k]
                found.append((distances[kept].astype(np.float32, copy=False),
                              [named[n] for n in kept]))
        return found

    def _faiss_id(self, item_id: str) -> int:
        """The FAISS id of `item_id`, assigning a fresh one on first sight (lock held)."""
        faiss_id = self._ids.get(item_id)
        if faiss_id is None:
            faiss_id = len(self._items)
            self._ids[item_id] = faiss_id
            self._items.append(item_id)
        return faiss_id
