"""streams.seen: remembered event ids of a partition, their expiry and changelog records."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from streams.seen import (
    MINUTE_MS,
    SeenIds,
    decode_record,
    encode_record,
    id_hashes,
)

DAY_MS = 24 * 3600 * 1000
T0 = 1_700_000_000_000


def replay(store: SeenIds, changelog: dict[bytes, bytes], hashes: np.ndarray,
           times: np.ndarray | list[int]) -> None:
    """Add ids and apply the records the store asks for to a compacted `changelog`."""
    for key, value in store.add(hashes, np.asarray(times, dtype=np.int64)):
        if value is None:
            changelog.pop(key, None)
        else:
            changelog[key] = value


def test_hashes_are_stable_and_distinct() -> None:
    hashes = id_hashes([f"ml-{k}" for k in range(10_000)])
    assert hashes.dtype == np.uint64
    assert len(np.unique(hashes)) == 10_000
    assert id_hashes(["ml-0"])[0] == hashes[0]
    # The first 8 bytes of BLAKE2b-64, little-endian: the same in every process and version.
    assert int(id_hashes(["a"])[0]) == 0x2F42665B399EF840


def test_membership_of_a_batch_over_fresh_and_merged_ids() -> None:
    store = SeenIds(window_ms=7 * DAY_MS, merge_records=3)
    ids = [f"e{k}" for k in range(500)]
    for start in range(0, 500, 100):  # five batches: merged after the third
        store.add(id_hashes(ids[start:start + 100]), [T0 + k for k in range(100)])
    assert len(store) == 500
    probe = id_hashes(ids[::7] + ["new-1", "new-2"])
    assert store.contains(probe).tolist() == [True] * len(ids[::7]) + [False, False]
    assert not SeenIds(window_ms=DAY_MS).contains(probe).any()


def test_ids_expire_with_the_watermark_not_with_later_events_of_a_user() -> None:
    store = SeenIds(window_ms=7 * DAY_MS)
    old = id_hashes(["old"])
    store.add(old, [T0])
    # Thousands of later events within the window: the old id is still remembered.
    store.add(id_hashes([f"later-{k}" for k in range(5000)]),
              np.linspace(T0, T0 + 6 * DAY_MS, 5000).astype(np.int64))
    assert store.contains(old).all()
    assert store.oldest_ms() == T0 + 6 * DAY_MS - 7 * DAY_MS
    # The watermark passes its time plus the window: forgotten.
    store.add(id_hashes(["next-week"]), [T0 + 7 * DAY_MS + 2 * MINUTE_MS])
    assert not store.contains(old).any()
    assert store.contains(id_hashes(["later-4999", "next-week"])).all()


def test_records_round_trip() -> None:
    hashes = id_hashes(["a", "b", "c"])
    minutes = np.array([1, 2, 3], dtype=np.int32)
    packed = decode_record(encode_record(1, T0, hashes, minutes))
    assert (packed.level, packed.watermark_ms) == (1, T0)
    assert packed.hashes.tolist() == hashes.tolist()
    assert packed.minutes.tolist() == [1, 2, 3]
    empty = decode_record(encode_record(0, T0, hashes[:0], minutes[:0]))
    assert len(empty.hashes) == 0
    with pytest.raises(ValueError):
        decode_record(encode_record(0, T0, hashes, minutes)[:-1])
    with pytest.raises(ValueError):
        decode_record(b"\x09" + encode_record(0, T0, hashes, minutes)[1:])


def test_restored_from_its_changelog_it_remembers_the_same_ids_and_watermark() -> None:
    store = SeenIds(window_ms=2 * DAY_MS, merge_records=4, chunk_ids=50)
    changelog: dict[bytes, bytes] = {}
    ids = [f"e{k}" for k in range(3000)]
    times = T0 + np.arange(3000, dtype=np.int64) * 150_000  # ~5 days of events
    for start in range(0, 3000, 70):
        replay(store, changelog, id_hashes(ids[start:start + 70]), times[start:start + 70])
    restored = SeenIds(window_ms=2 * DAY_MS, merge_records=4, chunk_ids=50)
    restored.load(changelog)
    assert restored.watermark_ms == store.watermark_ms == int(times[-1])
    probe = id_hashes(ids)
    assert (restored.contains(probe) == store.contains(probe)).all()
    remembered = store.contains(probe)
    assert remembered[times >= store.oldest_ms()].all()  # everything within the window
    assert not remembered[:1000].any()  # days older than the window: forgotten
    # Expired records were tombstoned: the changelog holds about a window of ids.
    held = sum(len(decode_record(value).hashes) for value in changelog.values())
    assert held <= len(store) + 4 * 70 + 50
    # New keys never overwrite a live record.
    before = dict(changelog)
    replay(restored, changelog, id_hashes(["after-restart"]), [int(times[-1])])
    assert all(changelog.get(key) in (value, None) for key, value in before.items())
    assert restored.contains(id_hashes(["after-restart", "e2999"])).all()


def test_memory_is_about_12_bytes_per_remembered_id() -> None:
    store = SeenIds(window_ms=7 * DAY_MS)
    n, batch = 1_000_000, 2000
    hashes = id_hashes([f"event-{k}" for k in range(n)])
    times = T0 + np.arange(n, dtype=np.int64) * 100
    tracemalloc.start()
    for start in range(0, n, batch):
        store.add(hashes[start:start + batch], times[start:start + batch])
    held, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(store) == n
    assert 12 * n <= store.nbytes <= 12 * n + 12 * 20_000
    assert held < 13 * n  # arrays, keys and bookkeeping: under 13 MB per million ids


def test_a_few_batches_of_expired_ids_leave_the_changelog_too() -> None:
    store = SeenIds(window_ms=3600 * 1000)  # merges only after 64 records, or on expiry
    changelog: dict[bytes, bytes] = {}
    for k in range(5):
        replay(store, changelog, id_hashes([f"old-{k}"]), [T0 + k])
    replay(store, changelog, id_hashes(["new"]), [T0 + 2 * 3600 * 1000])
    values = [decode_record(value) for value in changelog.values()]
    assert sum(len(v.hashes) for v in values) == 1
    assert max(v.watermark_ms for v in values) == T0 + 2 * 3600 * 1000
