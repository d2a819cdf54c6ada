"""Nearest items by inner product over L2-normalised vectors (cosine similarity).

Item ids are strings outside and int64 FAISS ids inside. Three kinds of FAISS index, chosen
by catalog size and the memory the vectors may take (:func:`index_kind`) and made by
``faiss.index_factory`` with the inner product metric:

- ``flat``: ``IDMap2,Flat``, exact; fine up to tens of thousands of items.
- ``ivf``: ``IVF{4·√N},Flat`` with a hashtable direct map, approximate; adds in ~85 µs and
  removes in ~12 µs at 1M items, so live upserts stay cheap (HNSW cannot remove).
- ``ivf-fp16`` and ``ivf-sq8``: the same lists holding each vector as half-precision
  floats (half the bytes) or as 8-bit codes over each dimension's trained range (a
  quarter), for catalogs whose whole vectors do not fit the memory setting: the least
  compression that fits is taken. Scalar codes over product-quantised ones: at 10M
  items their recall/latency curve is the better one (bench/index_layouts.py). Vectors
  read back from them are their decoded codes; an 8-bit component outside the range
  trained on is clipped to it.

Exclusions (seen and excluded items) never eat into the k results: a search fetches one
more neighbour per excluded item and drops them (cheaper than a FAISS id selector, which
is checked against every scanned vector, and it lets queries with different exclusions
share one FAISS call). Every method holds one lock, so searches may run in worker
threads (FAISS releases the GIL) next to upserts.

FAISS ids name items through a numpy object array (FAISS id -> item id): a search turns
its labels into item ids with one gather instead of a Python lookup per label, and
hands the labels back (:class:`Hits`) so vectors of found items are read without
looking their ids up again.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import os
import threading
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import faiss
import numpy as np

log = logging.getLogger(__name__)

_EPS = 1e-12
IndexKind = Literal["flat", "ivf", "ivf-fp16", "ivf-sq8"]
# IVF kind -> index_factory's vector codec and bytes per vector component.
_CODECS: dict[str, tuple[str, float]] = {"ivf": ("Flat", 4), "ivf-fp16": ("SQfp16", 2),
                                         "ivf-sq8": ("SQ8", 1)}


def index_kind(n_items: int, ivf_threshold: int, *, dim: int = 0,
               memory_mb: float | None = None) -> IndexKind:
    """Exact search below `ivf_threshold` items; IVF at or above it, storing `n_items` x
    `dim` vectors in the least compressed codec that fits `memory_mb` (None: float32
    always; 8-bit codes when nothing fits)."""
    if n_items < ivf_threshold:
        return "flat"
    if memory_mb is None:
        return "ivf"
    for kind in ("ivf", "ivf-fp16"):
        if n_items * dim * _CODECS[kind][1] <= memory_mb * 2**20:
            return kind
    return "ivf-sq8"


def empty_ivf(dim: int, nlist: int, kind: IndexKind) -> faiss.Index:
    """An untrained IVF index of `kind` with `nlist` lists (inner product). 8-bit codes
    are of the vectors, not of their residuals from the list centroid: unit vectors'
    components have one range, which keeps a new item's codes inside it (measured: the
    same recall)."""
    index = faiss.index_factory(dim, f"IVF{nlist},{_CODECS[kind][0]}", faiss.METRIC_INNER_PRODUCT)
    if kind == "ivf-sq8":
        faiss.downcast_index(faiss.extract_index_ivf(index)).by_residual = False  # type: ignore[attr-defined]
    return index


def ivf_lists(n_items: int) -> int:
    """Inverted lists for `n_items`: 4·√N (the ``nprobe`` setting is sized against it)."""
    return max(1, int(4 * math.sqrt(max(n_items, 1))))


# (catalog size, nprobe) where IVF-Flat over 64-d vectors measured recall@10 >= 0.95
# against exact search (bench/README.md: 0.979 at 1M items, 0.962 at 10M; 32 lists give
# only 0.826 at 10M): the lists searched must grow faster than the 4·√N lists do
AUTO_NPROBE = ((1_000_000, 32), (10_000_000, 256))


def auto_nprobe(n_items: int) -> int:
    """The nprobe for a catalog of `n_items` when the setting is 0 (by catalog size):
    32 up to 1M items, then the power law through the two measured points of
    `AUTO_NPROBE` (~N^0.9; extrapolated past 10M), at most every list."""
    (n0, p0), (n1, p1) = AUTO_NPROBE
    if n_items <= n0:
        return min(p0, ivf_lists(n_items))
    slope = math.log(p1 / p0) / math.log(n1 / n0)
    return min(ivf_lists(n_items), math.ceil(p0 * (n_items / n0) ** slope - 1e-9))


# Part of every cache key: a change to what a built index's file holds changes it. (The
# factory-made IVFFlat writes the same bytes as the one assembled by hand before it.)
_CACHE_FORMAT = "ivfflat-1"
CACHE_KEEP = 4  # cached indexes kept, the most recently used


def _evict(cache_dir: Path, keep: int) -> None:
    """Delete all but the `keep` most recently used cached indexes (a reader holding one
    open keeps reading it; a later build of its rows writes it again)."""
    def used(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # evicted by another process meanwhile
            return 0.0

    files = sorted(cache_dir.glob("ivf-*.faiss"), key=used, reverse=True)
    for old in files[keep:]:
        log.info("index cache: %s evicted", old.name)
        old.unlink(missing_ok=True)
        Path(f"{old}.lock").unlink(missing_ok=True)


class Hits(NamedTuple):
    """One query row's answer: scores (float32), item ids and their FAISS ids (int64)."""

    scores: np.ndarray
    item_ids: list[str]
    keys: np.ndarray


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
    norms = np.sqrt(np.add.reduce(array * array, axis=1, keepdims=True))  # [n, 1], as linalg.norm
    if (norms < _EPS).any():
        raise ValueError("a vector is all zeros")
    return np.ascontiguousarray(array / norms, dtype=np.float32)


def _trained_ivf(dim: int, training: np.ndarray, nprobe: int, kind: IndexKind) -> faiss.Index:
    """An empty IVF index of `kind` trained on `training` [n, dim] rows (its lists, and
    the 8-bit codec's ranges), with a hashtable direct map."""
    nlist = ivf_lists(len(training))
    ivf = empty_ivf(dim, nlist, kind)
    sample = training
    most = 64 * nlist  # k-means needs ~40-256 points per list; more only costs time
    if len(training) > most:
        rows = np.random.default_rng(0).choice(len(training), size=most, replace=False)
        sample = training[np.sort(rows)]
    ivf.train(sample)
    _tune(ivf, nprobe)
    return ivf


def _tune(index: faiss.Index, nprobe: int) -> None:
    """Set an IVF index's nprobe and its hashtable direct map (ids of our choosing that
    remove and reconstruct in O(1)); the map is a no-op when the index already has it."""
    ivf = faiss.extract_index_ivf(index)
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
    ivf.nprobe = nprobe


class ItemIndex:
    """Items by vector; :meth:`search_hits` answers the most similar items first."""

    def __init__(self, dim: int, *, kind: IndexKind = "flat", nprobe: int = 8,
                 training: np.ndarray | None = None) -> None:
        """An empty index; an IVF one is trained on `training` rows [n, dim] first."""
        self.dim = dim
        self.kind: IndexKind = kind
        if nprobe == 0:  # by catalog size
            nprobe = auto_nprobe(0 if training is None else len(training))
        self.nprobe = nprobe
        if kind != "flat":
            if training is None or len(training) == 0:
                raise ValueError(f"an {kind} index needs training vectors")
            self._index = _trained_ivf(dim, normalise(training, dim), nprobe, kind)
        else:
            self._index = faiss.index_factory(dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
        self._ids: dict[str, int] = {}  # item id -> FAISS id
        # FAISS id -> item id (None once removed); the first `_assigned` rows are in use.
        self._items: np.ndarray = np.full(1024, None, dtype=object)
        self._assigned = 0
        self._lock = threading.Lock()

    @classmethod
    def build(cls, dim: int, item_ids: Sequence[str], vectors: np.ndarray, *,
              ivf_threshold: int, nprobe: int, cache_dir: Path | None = None,
              memory_mb: float | None = None) -> ItemIndex:
        """An index of the kind that suits the catalog size and `memory_mb` (the most the
        vectors may take stored whole; :func:`index_kind`), holding `vectors`; an IVF
        one searches `nprobe` lists (0: :func:`auto_nprobe` of the catalog size).

        With `cache_dir`, a built IVF index is kept there as a FAISS file named by a hash
        of its ids and vectors, and later builds of the same rows read it instead of
        training again: the workers of one server share one build, and a restart skips it.
        """
        kind = index_kind(len(item_ids), ivf_threshold, dim=dim, memory_mb=memory_mb)
        nprobe = nprobe or auto_nprobe(len(item_ids))  # 0: by catalog size
        rows = normalise(vectors, dim) if len(item_ids) else np.empty((0, dim), np.float32)
        if kind != "flat" and cache_dir is not None and len(set(item_ids)) == len(item_ids):
            return cls._cached(dim, kind, list(item_ids), rows, nprobe, cache_dir)
        return cls._built(dim, kind, item_ids, rows, nprobe)

    @classmethod
    def _built(cls, dim: int, kind: IndexKind, item_ids: Sequence[str], rows: np.ndarray,
               nprobe: int) -> ItemIndex:
        index = cls(dim, kind=kind, nprobe=nprobe, training=rows if kind != "flat" else None)
        if len(item_ids):
            index.upsert(item_ids, rows)
        log.info("%s index of %s items (dimension %s)", kind, len(index), dim)
        return index

    @classmethod
    def _cached(cls, dim: int, kind: IndexKind, item_ids: list[str], rows: np.ndarray, nprobe: int,
                cache_dir: Path) -> ItemIndex:
        """The IVF index of `kind` of `rows` (unique `item_ids`, FAISS id = row) from
        `cache_dir`, built and written there first if no process has yet; one process
        builds at a time."""
        digest = hashlib.blake2b(digest_size=16)
        layout = "" if kind == "ivf" else f"{kind}:"  # the IVFFlat files of before keep their names
        digest.update(f"{_CACHE_FORMAT}:{layout}{dim}:{ivf_lists(len(rows))}:{len(item_ids)}\n".encode())
        digest.update("\0".join(item_ids).encode())
        digest.update(np.ascontiguousarray(rows).data)
        path = cache_dir / f"ivf-{digest.hexdigest()}.faiss"
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            lock = open(cache_dir / f"{path.name}.lock", "w")
        except OSError as error:
            log.warning("index cache %s not usable (%s): building without it", cache_dir, error)
            return cls._built(dim, kind, item_ids, rows, nprobe)
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            for stale in cache_dir.glob(f"{path.name}.*.partial"):  # a writer that died
                stale.unlink(missing_ok=True)
            if path.exists():
                try:
                    stored = faiss.read_index(str(path))
                except RuntimeError as error:
                    log.warning("unreadable index cache %s (%s): building again", path, error)
                else:
                    if stored.ntotal == len(item_ids) and stored.d == dim:
                        log.info("%s index of %s items (dimension %s) read from %s",
                                 kind, len(item_ids), dim, path)
                        os.utime(path)  # in use: the last to be evicted
                        return cls._adopt(dim, kind, stored, item_ids, nprobe)
                    log.warning("index cache %s holds %s rows of dimension %s, expected %s of %s: "
                                "building again", path, stored.ntotal, stored.d, len(item_ids), dim)
            index = cls._built(dim, kind, item_ids, rows, nprobe)
            partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
            try:
                faiss.write_index(index._index, str(partial))
                os.replace(partial, path)  # whole or absent: a reader never sees half a file
            except (RuntimeError, OSError) as error:  # a full disk: serve the index anyway
                log.warning("index not written to the cache %s: %s", path, error)
                partial.unlink(missing_ok=True)
            else:
                _evict(cache_dir, keep=CACHE_KEEP)
            return index

    @classmethod
    def _adopt(cls, dim: int, kind: IndexKind, stored: faiss.Index, item_ids: list[str],
               nprobe: int) -> ItemIndex:
        """An IVF ItemIndex around a read FAISS index whose id i is item_ids[i]."""
        index = cls.__new__(cls)
        index.dim, index.kind, index.nprobe = dim, kind, nprobe
        _tune(stored, nprobe)  # its hashtable direct map comes with the file
        index._index = stored
        index._ids = {item_id: n for n, item_id in enumerate(item_ids)}
        index._items = np.empty(max(1024, len(item_ids)), dtype=object)
        index._items[:len(item_ids)] = item_ids
        index._assigned = len(item_ids)
        index._lock = threading.Lock()
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
            self._items[gone] = None
            if gone:
                _remove(self._index, gone)
        return len(gone)

    def found_vectors(self, keys: np.ndarray, item_ids: Sequence[str],
                      others: Iterable[str]) -> tuple[np.ndarray, list[str], np.ndarray] | None:
        """The unit vectors of items a search found (by their FAISS ids `keys`, with their
        item ids) and of the indexed ones of `others`, in one call into FAISS:
        ``(found [n, dim], indexed others, their vectors [m, dim])``. None when one of the
        found items has been removed or replaced since the search.
        """
        get = self._ids.get
        with self._lock:
            if self._items[keys].tolist() != list(item_ids):
                return None
            pairs = [(item_id, key) for item_id in others if (key := get(item_id)) is not None]
            wanted = np.concatenate([keys, np.fromiter((key for _, key in pairs), np.int64, len(pairs))])
            matrix = np.asarray(self._index.reconstruct_batch(wanted), dtype=np.float32)
        n = len(keys)
        return matrix[:n], [item_id for item_id, _ in pairs], matrix[n:]

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

    def search_hits(
        self, query_vectors: np.ndarray, ks: Sequence[int], excludes: Sequence[Collection[str]]
    ) -> list[Hits]:
        """Query row i's up-to-``ks[i]`` most similar items, best first, never one of
        ``excludes[i]``, in one FAISS call for all rows: cosine similarities (float32),
        item ids and FAISS ids; fewer than k when the index holds fewer items.

        Each row fetches its k plus one per excluded item, so exclusions never eat into
        the k results; the excluded ones are dropped from what comes back.
        """
        if any(k < 1 for k in ks):
            raise ValueError(f"k must be positive, got {min(ks)}")
        xq = normalise(query_vectors, self.dim)  # [nq, dim]
        if not len(ks) == len(excludes) == len(xq):
            raise ValueError("one k and one exclusion set per query row")
        with self._lock:
            n = len(self._ids)
            if n == 0:
                return [Hits(np.empty(0, np.float32), [], np.empty(0, np.int64)) for _ in xq]
            fetch = min(n, max(k + len(excluded) for k, excluded in zip(ks, excludes)))
            D, I = self._index.search(xq, fetch)  # [nq, fetch] each
            # An approximate index may return fewer than asked (label -1, at the end).
            named = self._items[np.maximum(I, 0)]  # [nq, fetch] item ids, None once removed
            named[I < 0] = None
            found: list[Hits] = []
            for distances, labels, names, k, excluded in zip(D, I, named, ks, excludes, strict=True):
                kept = [n for n, item_id in enumerate(names.tolist())
                        if item_id is not None and item_id not in excluded][:k]
                found.append(Hits(distances[kept].astype(np.float32, copy=False),
                                  names[kept].tolist(), labels[kept]))
        return found

    def _faiss_id(self, item_id: str) -> int:
        """The FAISS id of `item_id`, assigning a fresh one on first sight (lock held)."""
        faiss_id = self._ids.get(item_id)
        if faiss_id is None:
            faiss_id = self._assigned
            if faiss_id == len(self._items):  # doubling keeps assignment amortised O(1)
                self._items = np.concatenate([self._items, np.full(len(self._items), None, dtype=object)])
            self._ids[item_id] = faiss_id
            self._items[faiss_id] = item_id
            self._assigned += 1
        return faiss_id
