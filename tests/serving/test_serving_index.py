"""ItemIndex against exact numpy search, through upserts and removals."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from serving_harness import exact_nearest, unit_rows

from serving import index as index_module
from serving.index import ItemIndex, index_kind, normalise

DIM = 16


def _search(index: ItemIndex, queries: np.ndarray, k: int,
            exclude: frozenset[str] | set[str] = frozenset()) -> tuple[list[np.ndarray], list[list[str]]]:
    """Every query row's scores and item ids, all with the same k and exclusions."""
    rows = len(queries) if np.ndim(queries) == 2 else 1
    found = index.search_hits(queries, [k] * rows, [exclude] * rows)
    return [hits.scores for hits in found], [hits.item_ids for hits in found]


def _stored(index: ItemIndex, item_id: str) -> np.ndarray:
    vector = index.vector(item_id)
    assert vector is not None, f"{item_id} is not indexed"
    return vector


def _indexed(seed: int, n: int) -> tuple[np.random.Generator, dict[str, np.ndarray], ItemIndex]:
    """A generator, `n` random unit vectors ``item-0...`` and an index holding them."""
    rng = np.random.default_rng(seed)
    vectors = unit_rows(rng, n, DIM)
    reference = {f"item-{i}": vectors[i] for i in range(len(vectors))}
    index = ItemIndex(DIM)
    index.upsert(list(reference), vectors)
    return rng, reference, index


def _check_agrees(index: ItemIndex, reference: dict[str, np.ndarray], queries: np.ndarray, k: int) -> None:
    scores, item_ids = _search(index, queries, k)
    assert len(scores) == len(item_ids) == len(queries)
    for query, row_scores, row_ids in zip(queries, scores, item_ids, strict=True):
        assert row_ids == exact_nearest(reference, query, k)
        expected = [float(reference[i] @ query / np.linalg.norm(query)) for i in row_ids]
        np.testing.assert_allclose(row_scores, expected, rtol=1e-5, atol=1e-5)


def test_index_agrees_with_exact_search_through_upserts_and_removals() -> None:
    rng, reference, index = _indexed(7, 300)
    queries = rng.normal(size=(12, DIM)).astype(np.float32)
    _check_agrees(index, reference, queries, 10)

    # Replace 50 vectors, add 40 new items, remove 60 (some of them just replaced).
    replaced = [f"item-{i}" for i in range(0, 100, 2)]
    fresh = unit_rows(rng, len(replaced) + 40, DIM)
    added = [f"new-{i}" for i in range(40)]
    index.upsert(replaced + added, fresh)
    reference.update(zip(replaced + added, fresh, strict=True))
    removed = [f"item-{i}" for i in range(40, 160, 2)]
    assert index.remove(removed + ["never-indexed"]) == len(removed)
    for item_id in removed:
        del reference[item_id]

    assert len(index) == len(reference)
    assert "new-3" in index and "item-40" not in index
    _check_agrees(index, reference, queries, 10)
    _check_agrees(index, reference, queries, len(reference))


def test_upsert_keeps_the_last_row_of_a_repeated_id_and_normalises() -> None:
    index = ItemIndex(3)
    index.upsert(["a", "b", "a"], np.array([[1, 0, 0], [0, 2, 0], [0, 0, 5]], np.float32))
    assert len(index) == 2
    np.testing.assert_allclose(_stored(index, "a"), [0, 0, 1])
    np.testing.assert_allclose(_stored(index, "b"), [0, 1, 0])
    assert index.vector("missing") is None
    scores, item_ids = _search(index, np.array([0, 0, 3], np.float32), 5)
    assert item_ids == [["a", "b"]]
    np.testing.assert_allclose(scores[0], [1.0, 0.0], atol=1e-6)


def test_search_of_an_empty_index_finds_nothing() -> None:
    index = ItemIndex(4)
    scores, item_ids = _search(index, np.ones((2, 4), np.float32), 3)
    assert item_ids == [[], []]
    assert [len(row) for row in scores] == [0, 0]


def test_removed_then_readded_item_is_found_again() -> None:
    index = ItemIndex(2)
    index.upsert(["a", "b"], np.array([[1, 0], [0, 1]], np.float32))
    index.remove(["a"])
    assert _search(index, np.array([1, 0.1], np.float32), 2)[1] == [["b"]]
    index.upsert(["a"], np.array([[1, 0]], np.float32))
    assert _search(index, np.array([1, 0.1], np.float32), 2)[1] == [["a", "b"]]


@pytest.mark.parametrize(
    "rows",
    [np.zeros((1, 3)), np.full((1, 3), np.nan), np.ones((1, 4)), np.ones((2, 2, 3))],
    ids=["zero", "nan", "wrong-dim", "3-d"],
)
def test_unusable_vectors_are_rejected(rows: np.ndarray) -> None:
    with pytest.raises(ValueError):
        normalise(rows, 3)
    index = ItemIndex(3)
    with pytest.raises(ValueError):
        index.upsert(["x"] * len(rows), rows)
    assert len(index) == 0


def test_ids_and_rows_must_match_and_k_must_be_positive() -> None:
    index = ItemIndex(2)
    with pytest.raises(ValueError, match="2 item ids for 1 vectors"):
        index.upsert(["a", "b"], np.ones((1, 2), np.float32))
    with pytest.raises(ValueError, match="k must be positive"):
        _search(index, np.ones(2, np.float32), 0)


def test_excluded_items_are_left_out_inside_the_search() -> None:
    rng, reference, index = _indexed(3, 200)
    query = rng.normal(size=DIM).astype(np.float32)
    excluded = set(exact_nearest(reference, query, 15)[::2]) | {"never-indexed"}
    _, item_ids = _search(index, query, 10, exclude=excluded)
    assert item_ids[0] == exact_nearest(reference, query, 10, excluded)


def test_index_kind_follows_the_catalog_size() -> None:
    assert index_kind(999, 1000) == "flat" and index_kind(1000, 1000) == "ivf"
    rows = unit_rows(np.random.default_rng(1), 50, DIM)
    assert ItemIndex.build(DIM, [f"i{n}" for n in range(50)], rows, ivf_threshold=51,
                           nprobe=4).kind == "flat"


def test_a_catalog_whose_vectors_pass_the_memory_setting_gets_the_least_compression_that_fits() -> None:
    # 1M x 64 float32 = 244 MiB, as fp16 122 MiB, as 8-bit codes 61 MiB.
    assert index_kind(1_000_000, 50_000, dim=64, memory_mb=256) == "ivf"
    assert index_kind(1_000_000, 50_000, dim=64, memory_mb=200) == "ivf-fp16"
    assert index_kind(1_000_000, 50_000, dim=64, memory_mb=100) == "ivf-sq8"
    assert index_kind(1_000_000, 50_000, dim=64, memory_mb=10) == "ivf-sq8"  # nothing fits: the smallest
    assert index_kind(1_000_000, 50_000, dim=64) == "ivf"  # no setting: always whole
    assert index_kind(40_000, 50_000, dim=64, memory_mb=1) == "flat"  # exact stays exact


def _recall_after_live_updates(rng: np.random.Generator, index: ItemIndex, item_ids: list[str],
                               vectors: np.ndarray) -> np.ndarray:
    """Remove the first 500 items and upsert 300 fresh ones (returned), then check
    recall@10 >= 0.95 against exact search and that no removed item is answered."""
    dim = vectors.shape[1]
    index.remove(item_ids[:500])
    fresh = unit_rows(rng, 300, dim, clusters=200)
    index.upsert([f"new-{i}" for i in range(300)], fresh)
    all_ids = item_ids[500:] + [f"new-{i}" for i in range(300)]
    matrix = np.concatenate([vectors[500:], fresh])
    # Queries near catalog items, as user vectors are (a mean of items they touched).
    queries = matrix[rng.choice(len(matrix), 100, replace=False)] + 0.1 * rng.normal(size=(100, dim))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    exact = np.argsort(-(queries @ matrix.T), axis=1)[:, :10]  # [100, 10]
    _, found = _search(index, queries, 10)
    hits = sum(len({all_ids[j] for j in row} & set(got)) for row, got in zip(exact, found, strict=True))
    assert hits / (10 * len(queries)) >= 0.95
    assert not set(item_ids[:500]) & {item for got in found for item in got}
    return fresh


@pytest.mark.parametrize(("kind", "share", "error"), [("ivf-fp16", 0.6, 1e-3), ("ivf-sq8", 0.3, 0.03)])
def test_a_coded_ivf_index_keeps_recall_and_takes_live_updates(
    tmp_path: Path, kind: str, share: float, error: float
) -> None:
    """A coded layout against exact search on clustered data: recall@10 >= 0.95 like
    IVF-Flat's, live upserts and removals, read-back vectors within the codes' error, and
    the index cache keeping it apart from an IVF-Flat build of the same rows."""
    rng = np.random.default_rng(12)
    n, dim = 20_000, 32
    vectors = unit_rows(rng, n, dim, clusters=200)
    item_ids = [f"item-{i}" for i in range(n)]
    budget = n * dim * 4 / 2**20 * share  # of what the whole vectors take
    cache = tmp_path / "cache"
    index = ItemIndex.build(dim, item_ids, vectors, ivf_threshold=10_000, nprobe=8,
                            memory_mb=budget, cache_dir=cache)
    assert index.kind == kind and len(index) == n
    fresh = _recall_after_live_updates(rng, index, item_ids, vectors)
    stored = index.vector("new-7")
    assert stored is not None
    np.testing.assert_allclose(stored, fresh[7] / np.linalg.norm(fresh[7]), atol=error)
    assert not np.allclose(stored, fresh[7] / np.linalg.norm(fresh[7]), atol=1e-6)  # decoded codes
    read = ItemIndex.build(dim, item_ids, vectors, ivf_threshold=10_000, nprobe=8,
                           memory_mb=budget, cache_dir=cache)
    whole = ItemIndex.build(dim, item_ids, vectors, ivf_threshold=10_000, nprobe=8, cache_dir=cache)
    assert (read.kind, whole.kind) == (kind, "ivf") and len(list(cache.glob("*.faiss"))) == 2
    np.testing.assert_allclose(whole.vector("item-9"), vectors[9], atol=1e-6)


def test_ivf_index_recall_on_clustered_data_and_live_updates() -> None:
    """IVF against exact search on clustered data: recall@10 >= 0.95, also after upserts
    and removals (which must not need a rebuild)."""
    rng = np.random.default_rng(11)
    n, dim = 20_000, 32
    vectors = unit_rows(rng, n, dim, clusters=200)
    item_ids = [f"item-{i}" for i in range(n)]
    index = ItemIndex.build(dim, item_ids, vectors, ivf_threshold=10_000, nprobe=8)
    assert index.kind == "ivf" and len(index) == n
    fresh = _recall_after_live_updates(rng, index, item_ids, vectors)
    np.testing.assert_allclose(index.vector("new-7"), fresh[7] / np.linalg.norm(fresh[7]), atol=1e-6)


def test_one_search_answers_every_row_with_its_own_k_and_exclusions() -> None:
    rng, reference, index = _indexed(5, 400)
    index.remove(["item-0", "item-1"])  # removed rows are never answered
    del reference["item-0"], reference["item-1"]
    queries = rng.normal(size=(3, DIM)).astype(np.float32)
    excludes = [
        frozenset(exact_nearest(reference, queries[0], 40)),  # all of its nearest 40
        frozenset(),
        frozenset({"never-indexed"} | set(exact_nearest(reference, queries[2], 9)[::3])),
    ]
    found = index.search_hits(queries, [5, 12, 7], excludes)
    for query, k, excluded, (scores, item_ids, _) in zip(queries, [5, 12, 7], excludes, found,
                                                         strict=True):
        assert item_ids == exact_nearest(reference, query, k, excluded)
        assert len(scores) == k and list(scores) == sorted(scores, reverse=True)
    with pytest.raises(ValueError, match="one k and one exclusion set per query row"):
        index.search_hits(queries, [5], excludes)


def _clustered_catalog(seed: int, n: int) -> tuple[np.random.Generator, np.ndarray, list[str]]:
    """A generator, `n` clustered unit vectors and their ids ``item-0...``."""
    rng = np.random.default_rng(seed)
    vectors = unit_rows(rng, n, DIM, clusters=20)
    return rng, vectors, [f"item-{i}" for i in range(n)]


def test_an_ivf_index_is_built_once_into_the_cache_and_read_from_it_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng, vectors, item_ids = _clustered_catalog(5, 2_000)
    reference = dict(zip(item_ids, vectors, strict=True))
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="serving.index"):
        built = ItemIndex.build(DIM, item_ids, vectors, ivf_threshold=1_000, nprobe=64, cache_dir=cache)
        read = ItemIndex.build(DIM, item_ids, vectors, ivf_threshold=1_000, nprobe=64, cache_dir=cache)
    assert [r.getMessage().startswith("ivf index of 2000 items (dimension 16)") for r in caplog.records] \
        == [True, True] and "read from" in caplog.records[1].getMessage()
    assert len(list(cache.glob("*.faiss"))) == 1 and read.kind == "ivf" and len(read) == 2_000
    queries = unit_rows(rng, 20, DIM, clusters=20)
    for got, expected in zip(_search(read, queries, 10)[0], _search(built, queries, 10)[0], strict=True):
        np.testing.assert_array_equal(got, expected)
    assert _search(read, queries, 10)[1] == _search(built, queries, 10)[1]
    # the read index takes live changes like a built one
    read.remove(["item-3"])
    fresh = unit_rows(rng, 1, DIM)
    read.upsert(["new-0"], fresh)
    np.testing.assert_allclose(_stored(read, "new-0"), fresh[0], atol=1e-6)
    assert read.vector("item-3") is None and len(read) == 2_000
    np.testing.assert_allclose(_stored(read, "item-9"), reference["item-9"], atol=1e-6)
    # other rows are another cache entry; a damaged file is built again, not trusted
    ItemIndex.build(DIM, item_ids[:1_500], vectors[:1_500], ivf_threshold=1_000, nprobe=64, cache_dir=cache)
    assert len(list(cache.glob("*.faiss"))) == 2
    for path in cache.glob("*.faiss"):
        path.write_bytes(b"not an index")
    again = ItemIndex.build(DIM, item_ids, vectors, ivf_threshold=1_000, nprobe=64, cache_dir=cache)
    assert _search(again, queries, 10)[1] == _search(built, queries, 10)[1]


def test_the_index_cache_keeps_the_most_recently_used_and_clears_dead_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, vectors, item_ids = _clustered_catalog(6, 1_200)
    cache = tmp_path / "cache"
    monkeypatch.setattr(index_module, "CACHE_KEEP", 2)

    def build(n: int) -> None:
        ItemIndex.build(DIM, item_ids[:n], vectors[:n], ivf_threshold=1_000, nprobe=8, cache_dir=cache)

    build(1_000)
    (first,) = cache.glob("*.faiss")
    dead_writer = cache / f"{first.name}.4242.partial"
    dead_writer.write_bytes(b"half an index")
    build(1_000)  # read back, and the dead writer's file is gone
    assert not dead_writer.exists()
    build(1_100)
    build(1_000)  # used again: the newest
    build(1_200)  # a third: the least recently used (1,100 rows) goes
    kept = {path.stat().st_size for path in cache.glob("*.faiss")}
    assert len(kept) == 2 and first.exists()


def test_nprobe_by_catalog_size_goes_through_the_measured_points() -> None:
    from serving.index import AUTO_NPROBE, auto_nprobe, ivf_lists

    (n0, p0), (n1, p1) = AUTO_NPROBE
    assert auto_nprobe(n0) == p0 and auto_nprobe(n1) == p1
    assert auto_nprobe(50_000) == 32 and auto_nprobe(10) == ivf_lists(10)  # never past the lists
    sizes = [1_000_000, 2_000_000, 5_000_000, 10_000_000, 30_000_000, 100_000_000]
    probes = [auto_nprobe(n) for n in sizes]
    assert probes == sorted(probes) and p0 < probes[2] < p1 < probes[-1] <= ivf_lists(sizes[-1])
    # the share of lists searched grows with the catalog, as the recall measurements need
    shares = [p / ivf_lists(n) for p, n in zip(probes, sizes, strict=True)]
    assert shares == sorted(shares)


def test_an_index_built_with_nprobe_0_searches_by_catalog_size() -> None:
    rng = np.random.default_rng(5)
    n = 2_000
    vectors = unit_rows(rng, n, DIM, clusters=20)
    item_ids = [f"item-{i}" for i in range(n)]
    index = ItemIndex.build(DIM, item_ids, vectors, ivf_threshold=1_000, nprobe=0)
    assert index.kind == "ivf" and index.nprobe == index_module.auto_nprobe(n) == 32
    assert index_module.faiss.extract_index_ivf(index._index).nprobe == 32
    fixed = ItemIndex.build(DIM, item_ids, vectors, ivf_threshold=1_000, nprobe=5)
    assert index_module.faiss.extract_index_ivf(fixed._index).nprobe == 5
