"""Ordering, catalog completion, selection and event ids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ingest.dataset import (
    Selection,
    empty_items,
    event_id,
    make_dataset,
    parse_users,
    rebase_shift_ms,
    select,
    user_fraction_point,
)
from ingest.errors import ReplayOptionError


def _interactions(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row": np.arange(len(rows), dtype=np.int64),
            "user_id": [user for user, _, _ in rows],
            "item_id": [item for _, item, _ in rows],
            "timestamp_ms": np.array([ts for _, _, ts in rows], dtype=np.int64),
            "event_type": "view",
            "value": 0.0,
        }
    )


def test_order_is_by_time_then_file_row() -> None:
    dataset = make_dataset(
        "t",
        empty_items(),
        _interactions([("u1", "a", 30), ("u2", "b", 10), ("u3", "c", 30), ("u4", "d", 10)]),
    )
    assert dataset.interactions["row"].tolist() == [1, 3, 0, 2]
    assert dataset.interactions["user_id"].tolist() == ["u2", "u4", "u1", "u3"]


def test_catalog_completion_keeps_last_duplicate_and_adds_missing() -> None:
    items = pd.DataFrame(
        {
            "item_id": ["a", "a", "b"],
            "title": ["old", "new", "B"],
            "description": ["", "", ""],
            "categories": [[], ["x"], []],
            "price": [1.0, 2.0, 3.0],
            "availability": ["", "in_stock", ""],
        }
    )
    dataset = make_dataset("t", items, _interactions([("u", "z", 2), ("u", "a", 1), ("u", "y", 3)]))
    catalog = dataset.items.set_index("item_id")
    assert list(catalog.index) == ["a", "b", "z", "y"]
    assert catalog.loc["a", "title"] == "new"
    assert catalog.loc["z", "title"] == "z"
    assert catalog.loc["y", "categories"] == []


def _ordered() -> pd.DataFrame:
    rows = [("u1", "a", 10), ("u2", "a", 20), ("u1", "b", 30), ("u3", "c", 40), ("u2", "d", 50)]
    return make_dataset("t", empty_items(), _interactions(rows)).interactions


def test_select_time_window_is_half_open() -> None:
    chosen = select(_ordered(), Selection(start_ms=20, end_ms=50))
    assert chosen["timestamp_ms"].tolist() == [20, 30, 40]


def test_select_first_users_in_time_order_then_limit() -> None:
    assert select(_ordered(), Selection(users=2))["user_id"].tolist() == ["u1", "u2", "u1", "u2"]
    assert select(_ordered(), Selection(users=2, limit=3))["timestamp_ms"].tolist() == [10, 20, 30]
    assert select(_ordered(), Selection(start_ms=30, users=1))["user_id"].tolist() == ["u1"]


def test_select_fraction_of_users_is_deterministic() -> None:
    users = [f"user{i}" for i in range(2000)]
    frame = _interactions([(user, "a", i) for i, user in enumerate(users)])
    first = select(frame, Selection(users=0.25))
    second = select(frame, Selection(users=0.25))
    assert first["user_id"].tolist() == second["user_id"].tolist()
    assert 400 < len(first) < 600
    assert all(user_fraction_point(user) < 0.25 for user in first["user_id"])


def test_select_rejects_bad_options() -> None:
    with pytest.raises(ReplayOptionError, match="--end must be later than --start"):
        select(_ordered(), Selection(start_ms=30, end_ms=30))
    with pytest.raises(ReplayOptionError, match="--limit must be >= 1"):
        select(_ordered(), Selection(limit=0))


@pytest.mark.parametrize(("text", "expected"), [("5", 5), ("0.1", 0.1), ("1", 1)])
def test_parse_users(text: str, expected: float) -> None:
    assert parse_users(text) == expected


@pytest.mark.parametrize("text", ["0", "1.5", "-2", "all", "1.0"])
def test_parse_users_rejects(text: str) -> None:
    with pytest.raises(ReplayOptionError, match="--users"):
        parse_users(text)


def test_event_id_is_deterministic_and_distinct() -> None:
    first = event_id("ml", 7, "u1", "a", 1000)
    assert first == event_id("ml", 7, "u1", "a", 1000)
    assert len(first) == 40
    others = {
        event_id("other", 7, "u1", "a", 1000),
        event_id("ml", 8, "u1", "a", 1000),
        event_id("ml", 7, "u2", "a", 1000),
        event_id("ml", 7, "u1", "b", 1000),
        event_id("ml", 7, "u1", "a", 1001),
    }
    assert first not in others and len(others) == 5


def test_rebase_shift_moves_last_to_now() -> None:
    timestamps = np.array([1_000, 5_000, 3_000])
    assert rebase_shift_ms(timestamps, 10_000) == 5_000
    assert rebase_shift_ms(np.array([], dtype=np.int64), 10_000) == 0
