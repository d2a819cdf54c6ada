"""Filters, merging, backfill and search windows: pure functions, no stores."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protos import events_pb2
from serving.catalog import Catalog, category_keys
from serving.filters import Filters
from serving.ranking import Candidate, candidates, first_window, merge, next_window

IDS = st.sampled_from([f"i{n}" for n in range(30)])


def _source(reason: str) -> st.SearchStrategy[list[Candidate]]:
    return st.lists(IDS, max_size=30).map(
        lambda ids: [Candidate(item_id, -rank, reason) for rank, item_id in enumerate(ids)]
    )


@given(
    personal=_source("personal"),
    popular=_source("popular"),
    excluded=st.frozensets(IDS),
    k=st.integers(min_value=1, max_value=40),
)
def test_merge_returns_k_distinct_allowed_items_when_enough_remain(
    personal: list[Candidate], popular: list[Candidate], excluded: frozenset[str], k: int
) -> None:
    filters = Filters(excluded=excluded)
    picked = merge([personal, popular], k, lambda item_id: filters.allows(item_id, None))
    ids = [c.item_id for c in picked]
    available = {c.item_id for c in personal + popular} - excluded
    assert len(ids) == len(set(ids)) == min(k, len(available))
    assert not set(ids) & excluded
    # Personal candidates come first, in their order; popular ones only backfill.
    personal_ids = list(dict.fromkeys(c.item_id for c in personal if c.item_id not in excluded))
    head = personal_ids[:k]
    assert ids[: len(head)] == head
    assert all(c.reason == "popular" for c in picked[len(head):])


def test_backfill_fills_up_to_k_from_popular_without_duplicates() -> None:
    personal = list(candidates(["a", "b", "c"], [0.9, 0.8, 0.7], "personal"))
    popular = list(candidates(["b", "x", "a", "y", "z"], [50, 40, 30, 20, 10], "popular"))
    picked = merge([personal, popular], 5, lambda item_id: item_id != "y")
    assert [(c.item_id, c.reason) for c in picked] == [
        ("a", "personal"), ("b", "personal"), ("c", "personal"), ("x", "popular"), ("z", "popular"),
    ]
    assert merge([personal, popular], 0, lambda _: True) == []


def _catalog() -> Catalog:
    catalog = Catalog()
    catalog.put(events_pb2.Item(item_id="film", title="Film", categories=["Comedy", "Drama"]))
    catalog.put(events_pb2.Item(item_id="doc", title="Doc", categories=["Documentary"]))
    catalog.put(events_pb2.Item(item_id="gone", categories=["Comedy"],
                                availability=events_pb2.DISCONTINUED))
    catalog.put(events_pb2.Item(item_id="sold", categories=["Comedy"],
                                availability=events_pb2.OUT_OF_STOCK))
    catalog.put(events_pb2.Item(item_id="stocked", categories=["Comedy"],
                                availability=events_pb2.IN_STOCK))
    return catalog


def _allowed(filters: Filters, catalog: Catalog) -> set[str]:
    ids = ["film", "doc", "gone", "sold", "stocked", "unknown"]
    return {item_id for item_id in ids if filters.allows(item_id, catalog.get(item_id))}


def test_filters_drop_unavailable_items_and_apply_categories_case_insensitively() -> None:
    catalog = _catalog()
    assert _allowed(Filters(), catalog) == {"film", "doc", "stocked", "unknown"}
    assert _allowed(Filters(excluded=frozenset({"film"})), catalog) == {"doc", "stocked", "unknown"}
    include_comedy = Filters(include_categories=category_keys([" comedy "]))
    assert _allowed(include_comedy, catalog) == {"film", "stocked"}
    exclude_drama = Filters(exclude_categories=category_keys(["DRAMA"]))
    assert _allowed(exclude_drama, catalog) == {"doc", "stocked", "unknown"}
    both = Filters(include_categories=category_keys(["Comedy", "Documentary"]),
                   exclude_categories=category_keys(["Drama"]))
    assert _allowed(both, catalog) == {"doc", "stocked"}


def test_catalog_replaces_and_removes_items() -> None:
    catalog = _catalog()
    catalog.put(events_pb2.Item(item_id="film", title="Film (restored)", price=9.5))
    entry = catalog.get("film")
    assert entry is not None and entry.title == "Film (restored)" and entry.categories == ()
    assert entry.price == 9.5 and entry.available
    catalog.remove("film")
    catalog.remove("never-there")
    assert catalog.get("film") is None and len(catalog) == 4


def test_windows_cover_exclusions_then_widen_to_the_limit() -> None:
    assert first_window(10, 5, 20, 1000) == 35
    assert first_window(10, 5, 20, 12) == 12
    assert first_window(1, 0, 0, 0) == 1
    assert next_window(35, 1000) == 140
    assert next_window(500, 1000) == 1000
    assert next_window(1000, 1000) is None
