"""Event ids accepted within the dedupe window of one partition of ``events``, without
Kafka: membership, expiry by the partition's event-time watermark, and the changelog
records that rebuild it.

An id is kept as a 64-bit hash (the first 8 bytes of the BLAKE2b digest of the user id
and event id, :func:`event_key`: duplicates are per user, as in the user states) with
the minute of its event time: 12 bytes. Most ids sit in one sorted ``uint64`` array with
a parallel ``int32`` array of minutes, so a batch's membership is one ``searchsorted``;
the ids of the last few batches sit in a small sorted array of their own until they are
merged in.

The watermark is the newest event time accepted in the partition. An event older than
the watermark less the window may have been forgotten: admission dead-letters it
(``too_old``) instead of risking a second acceptance; everything newer is remembered.
Ids whose minute ends before that bound are dropped (every ``EXPIRY_STEPS``-th of the
window, so the arrays are filtered rarely).

Changelog (compacted, one Kafka partition per events partition; key: a decimal sequence
number; value: :func:`encode_record`). Each batch's new ids become a level-0 record; once
``merge_records`` of them (or ``merge_ids`` ids) have gathered, or ids expire, they are
rewritten as level-1 records of up to ``chunk_ids`` ids and tombstoned. A level-1 record
is tombstoned when the newest id in it expires. So the topic holds about the ids of one
window, plus what compaction has not yet removed, and restoring reads a few records per
``chunk_ids`` ids. Every record carries the watermark when it was written; the newest
record of a partition is never a tombstone, so the watermark comes back with the ids.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

MINUTE_MS = 60_000
EXPIRY_STEPS = 64
FORMAT_VERSION = 1
HEADER = struct.Struct("<BBqI")  # format version, level, watermark (ms), number of ids

Hashes = npt.NDArray[np.uint64]
Minutes = npt.NDArray[np.int32]
# A changelog record: key, value (None: a tombstone).
Change = tuple[bytes, bytes | None]


def event_key(user_id: str, event_id: str) -> str:
    """What identifies an event for dedupe; the length prefix keeps the split unambiguous."""
    return f"{len(user_id)}:{user_id}{event_id}"


def id_hashes(keys: Sequence[str]) -> Hashes:
    """64-bit hashes of event keys, stable across processes and versions."""
    digests = b"".join(
        hashlib.blake2b(key.encode(), digest_size=8).digest() for key in keys
    )
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def minutes_of(times_ms: npt.ArrayLike) -> Minutes:
    return (np.asarray(times_ms, dtype=np.int64) // MINUTE_MS).astype(np.int32)


class Packed(NamedTuple):
    """A decoded changelog record."""

    level: int
    watermark_ms: int
    hashes: Hashes
    minutes: Minutes


def encode_record(level: int, watermark_ms: int, hashes: Hashes, minutes: Minutes) -> bytes:
    """Header, then the hashes (uint64 LE), then their minutes (int32 LE)."""
    return b"".join((
        HEADER.pack(FORMAT_VERSION, level, watermark_ms, len(hashes)),
        hashes.astype("<u8").tobytes(),
        minutes.astype("<i4").tobytes(),
    ))


def decode_record(value: bytes) -> Packed:
    """Inverse of :func:`encode_record`; raises ValueError on another format or length."""
    if len(value) < HEADER.size:
        raise ValueError(f"a record of {len(value)} bytes has no header")
    version, level, watermark_ms, count = HEADER.unpack_from(value)
    if version != FORMAT_VERSION:
        raise ValueError(f"record format {version}, expected {FORMAT_VERSION}")
    if len(value) != HEADER.size + 12 * count:
        raise ValueError(f"a record of {count} ids has {len(value)} bytes")
    body = HEADER.size + 8 * count
    hashes = np.frombuffer(value, dtype="<u8", count=count, offset=HEADER.size)
    minutes = np.frombuffer(value, dtype="<i4", count=count, offset=body)
    return Packed(level, watermark_ms, hashes.astype(np.uint64), minutes.astype(np.int32))


def _contains(sorted_hashes: Hashes, hashes: Hashes) -> npt.NDArray[np.bool_]:
    if not len(sorted_hashes):
        return np.zeros(len(hashes), dtype=bool)
    positions = np.searchsorted(sorted_hashes, hashes)
    np.minimum(positions, len(sorted_hashes) - 1, out=positions)
    return sorted_hashes[positions] == hashes  # type: ignore[no-any-return]


def _merged(a: Hashes, a_minutes: Minutes, b: Hashes, b_minutes: Minutes
            ) -> tuple[Hashes, Minutes]:
    """Two sorted arrays (with their minutes) as one; linear in ``a``, the larger."""
    order = np.argsort(b, kind="stable")
    b, b_minutes = b[order], b_minutes[order]
    at = np.searchsorted(a, b)
    return np.insert(a, at, b), np.insert(a_minutes, at, b_minutes)


class SeenIds:
    """The remembered ids of one partition and the changelog records that keep them."""

    def __init__(self, *, window_ms: int, merge_records: int = 64, merge_ids: int = 16_384,
                 chunk_ids: int = 32_768) -> None:
        self.window_ms = window_ms
        self._merge_records = merge_records
        self._merge_ids = merge_ids
        self._chunk_ids = chunk_ids
        self.watermark_ms: int | None = None
        self._hashes: Hashes = np.empty(0, np.uint64)  # sorted
        self._minutes: Minutes = np.empty(0, np.int32)
        self._runs: dict[bytes, int] = {}  # level-1 key -> newest minute in it
        self._fresh: Hashes = np.empty(0, np.uint64)  # sorted; ids of the level-0 records
        self._fresh_minutes: Minutes = np.empty(0, np.int32)
        self._fresh_keys: list[bytes] = []
        self._expired_below = np.iinfo(np.int32).min  # minute
        self._next_key = 0
        self._pending: list[Change] = []  # tombstones found on restore, not yet written

    def __len__(self) -> int:
        return len(self._hashes) + len(self._fresh)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays of ids (the bulk of the memory)."""
        return sum(a.nbytes for a in (self._hashes, self._minutes, self._fresh,
                                      self._fresh_minutes))

    def oldest_ms(self, watermark_ms: int | None = None) -> int | None:
        """Events before this time may have been forgotten (None: nothing yet)."""
        watermark = self.watermark_ms if watermark_ms is None else watermark_ms
        return None if watermark is None else watermark - self.window_ms

    def contains(self, hashes: Hashes) -> npt.NDArray[np.bool_]:
        """Whether each hash is among the remembered ids."""
        return _contains(self._hashes, hashes) | _contains(self._fresh, hashes)

    def add(self, hashes: Hashes, times_ms: npt.ArrayLike) -> list[Change]:
        """Remember newly accepted ids; returns the changelog records to write with them
        (in the transaction of the records they came from)."""
        if not len(hashes):
            return []
        minutes = minutes_of(times_ms)
        newest = int(np.max(np.asarray(times_ms, dtype=np.int64)))
        self.watermark_ms = newest if self.watermark_ms is None else max(self.watermark_ms,
                                                                         newest)
        changes, self._pending = self._pending, []
        for start in range(0, len(hashes), self._chunk_ids):
            key = self._key()
            part, part_minutes = hashes[start:start + self._chunk_ids], \
                minutes[start:start + self._chunk_ids]
            changes.append((key, encode_record(0, self.watermark_ms, part, part_minutes)))
            self._fresh_keys.append(key)
            self._fresh, self._fresh_minutes = _merged(self._fresh, self._fresh_minutes,
                                                       part, part_minutes)
        below = self._expiry_due()
        gone = self._forget(below) if below is not None else []
        if below is not None or len(self._fresh_keys) >= self._merge_records \
                or len(self._fresh) >= self._merge_ids:
            changes += self._merge()  # on expiry too: level-0 records lose their expired ids
        return changes + gone

    def load(self, records: Mapping[bytes, bytes]) -> None:
        """Rebuild from a partition's committed changelog (key -> newest value)."""
        for key, value in sorted(records.items(), key=lambda kv: int(kv[0])):
            packed = decode_record(value)
            self._next_key = max(self._next_key, int(key) + 1)
            if self.watermark_ms is None or packed.watermark_ms > self.watermark_ms:
                self.watermark_ms = packed.watermark_ms
            if packed.level == 0:
                self._fresh_keys.append(key)
                self._fresh, self._fresh_minutes = _merged(
                    self._fresh, self._fresh_minutes, packed.hashes, packed.minutes)
            else:
                self._runs[key] = int(packed.minutes.max()) if len(packed.minutes) else 0
                self._hashes, self._minutes = _merged(
                    self._hashes, self._minutes, packed.hashes, packed.minutes)
        # Records left holding only expired ids: tombstoned with the next batch's records.
        below = self._expiry_due()
        if below is not None:
            self._pending += self._forget(below)

    def _key(self) -> bytes:
        key = b"%d" % self._next_key
        self._next_key += 1
        return key

    def _merge(self) -> list[Change]:
        """Rewrite the level-0 records as level-1 ones and move their ids to the main array."""
        assert self.watermark_ms is not None
        changes: list[Change] = []
        for start in range(0, len(self._fresh), self._chunk_ids):
            part = self._fresh[start:start + self._chunk_ids]
            part_minutes = self._fresh_minutes[start:start + self._chunk_ids]
            key = self._key()
            self._runs[key] = int(part_minutes.max())
            changes.append((key, encode_record(1, self.watermark_ms, part, part_minutes)))
        changes += [(key, None) for key in self._fresh_keys]
        self._hashes, self._minutes = _merged(self._hashes, self._minutes, self._fresh,
                                              self._fresh_minutes)
        self._fresh, self._fresh_minutes = np.empty(0, np.uint64), np.empty(0, np.int32)
        self._fresh_keys = []
        return changes

    def _expiry_due(self) -> int | None:
        """The minute before which ids are to be forgotten now, if it has moved on enough."""
        oldest = self.oldest_ms()
        if oldest is None:
            return None
        below = oldest // MINUTE_MS  # a minute before this one ends before `oldest`
        step = max(1, self.window_ms // MINUTE_MS // EXPIRY_STEPS)
        return below if below >= self._expired_below + step else None

    def _forget(self, below: int) -> list[Change]:
        """Forget ids of minutes before `below`; tombstones of the level-1 records left
        with no id to remember."""
        self._expired_below = below
        keep = self._minutes >= below
        self._hashes, self._minutes = self._hashes[keep], self._minutes[keep]
        keep = self._fresh_minutes >= below
        self._fresh, self._fresh_minutes = self._fresh[keep], self._fresh_minutes[keep]
        gone = [key for key, newest in self._runs.items() if newest < below]
        for key in gone:
            del self._runs[key]
        return [(key, None) for key in gone]
