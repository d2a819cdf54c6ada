"""CSV and Parquet import: aliases, timestamp detection, and every error message."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ingest.errors import (
    EmptyFileError,
    InvalidValueError,
    MissingColumnError,
    SourceFileNotFoundError,
    TimestampParseError,
    UnknownEventTypeError,
    UnsupportedFormatError,
)
from ingest.tabular import load_tabular


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_with_aliases_and_epoch_seconds(tmp_path: Path) -> None:
    interactions = _write(
        tmp_path / "shop.csv",
        "customer_id,product_id,ts,action,amount\n"
        "c1,p1,1600000002,view,\n"
        "c2,p2,1600000001,AddToCart,2\n"
        "c1,p2,1600000002,transaction,19.5\n",
    )
    items = _write(
        tmp_path / "items.csv",
        "id,name,description,category,price,availability\n"
        "p1,Red Shoe,Comfortable,Shoes|Red ,49.90,in stock\n"
        "p2,Blue Hat,,,,\n",
    )
    dataset = load_tabular(interactions, items)
    assert dataset.name == "shop"
    inter = dataset.interactions
    assert inter["row"].tolist() == [1, 0, 2]
    assert inter["user_id"].tolist() == ["c2", "c1", "c1"]
    assert inter["timestamp_ms"].tolist() == [
        1_600_000_001_000,
        1_600_000_002_000,
        1_600_000_002_000,
    ]
    assert inter["event_type"].tolist() == ["add_to_cart", "view", "purchase"]
    assert inter["value"].tolist() == [2.0, 0.0, 19.5]
    catalog = dataset.items.set_index("item_id")
    assert catalog.loc["p1", "categories"] == ["Shoes", "Red"]
    assert catalog.loc["p1", "price"] == pytest.approx(49.9)
    assert catalog.loc["p1", "availability"] == "in_stock"
    assert catalog.loc["p2", "categories"] == []
    assert catalog.loc["p2", "description"] == ""


def test_epoch_milliseconds_and_iso_are_detected(tmp_path: Path) -> None:
    millis = _write(tmp_path / "ms.csv", "user,item,timestamp\nu,a,1600000000123\n")
    assert load_tabular(millis).interactions["timestamp_ms"].tolist() == [1_600_000_000_123]
    iso = _write(
        tmp_path / "iso.csv",
        "user,item,timestamp\nu,a,2020-09-13T12:26:40Z\nu,b,2020-09-13T14:26:40.5+02:00\n"
        "u,c,2020-09-13 12:26:41\n",
    )
    assert load_tabular(iso).interactions["timestamp_ms"].tolist() == [
        1_600_000_000_000,
        1_600_000_000_500,
        1_600_000_001_000,
    ]


def test_parquet_with_native_types_and_explicit_columns(tmp_path: Path) -> None:
    interactions = tmp_path / "log.parquet"
    pd.DataFrame(
        {
            "uid": [1, 2],
            "sku": ["a", "b"],
            "when": pd.to_datetime(["2021-01-01T00:00:01", "2021-01-01T00:00:00"]),
            "event_type": ["purchase", "click"],
            "value": [3.0, 1.0],
        }
    ).to_parquet(interactions)
    items = tmp_path / "catalog.parquet"
    pd.DataFrame(
        {"item_id": ["a"], "title": ["A"], "categories": [["x", "y"]], "price": [9.5]}
    ).to_parquet(items)
    dataset = load_tabular(
        interactions,
        items,
        name="demo",
        interaction_columns={"user_id": "uid", "item_id": "sku", "timestamp": "when"},
    )
    assert dataset.name == "demo"
    assert dataset.interactions["user_id"].tolist() == ["2", "1"]
    assert dataset.interactions["timestamp_ms"].tolist() == [1_609_459_200_000, 1_609_459_201_000]
    assert dataset.interactions["event_type"].tolist() == ["click", "purchase"]
    catalog = dataset.items.set_index("item_id")
    assert catalog.loc["a", "categories"] == ["x", "y"]
    assert catalog.loc["b", "title"] == "b"  # interacted but not in the items file


def test_default_event_type_for_missing_column_and_empty_cells(tmp_path: Path) -> None:
    path = _write(tmp_path / "i.csv", "user,item,timestamp,event_type\nu,a,1,\nu,b,2,click\n")
    dataset = load_tabular(path, default_event_type="purchase")
    assert dataset.interactions["event_type"].tolist() == ["purchase", "click"]
    bare = _write(tmp_path / "j.csv", "user,item,timestamp\nu,a,1\n")
    assert load_tabular(bare).interactions["event_type"].tolist() == ["view"]


def test_items_only(tmp_path: Path) -> None:
    items = _write(tmp_path / "items.csv", "item_id,title\na,A\nb,B\n")
    dataset = load_tabular(items=items)
    assert dataset.items["item_id"].tolist() == ["a", "b"]
    assert dataset.interactions.empty


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceFileNotFoundError, match=r"nope\.csv: no such file"):
        load_tabular(tmp_path / "nope.csv")


def test_unknown_extension(tmp_path: Path) -> None:
    path = _write(tmp_path / "data.json", "{}")
    with pytest.raises(UnsupportedFormatError, match=r"data\.json: unsupported file type; use one of \.csv"):
        load_tabular(path)


def test_missing_required_column_is_named_with_columns_found(tmp_path: Path) -> None:
    path = _write(tmp_path / "i.csv", "user,product,when\nu,a,1\n")
    with pytest.raises(MissingColumnError) as caught:
        load_tabular(path)
    message = str(caught.value)
    assert "required column 'item_id' not found" in message
    assert "columns found: user, product, when" in message


def test_explicit_column_that_does_not_exist(tmp_path: Path) -> None:
    path = _write(tmp_path / "i.csv", "user,item,timestamp\nu,a,1\n")
    with pytest.raises(MissingColumnError, match=r"column 'uid' \(for user_id\) not found; columns found: user, item, timestamp"):
        load_tabular(path, interaction_columns={"user_id": "uid"})
    with pytest.raises(MissingColumnError, match="unknown field"):
        load_tabular(path, interaction_columns={"userid": "user"})


def test_missing_item_title(tmp_path: Path) -> None:
    path = _write(tmp_path / "items.csv", "item_id,price\na,1\n")
    with pytest.raises(MissingColumnError, match="required column 'title' not found.*columns found: item_id, price"):
        load_tabular(items=path)


def test_unparsable_timestamp_names_the_row(tmp_path: Path) -> None:
    numbers = _write(tmp_path / "n.csv", "user,item,timestamp\nu,a,1600000000\nu,b,soon\n")
    with pytest.raises(TimestampParseError, match=r"column 'timestamp', data row 2: cannot read 'soon'"):
        load_tabular(numbers)
    iso = _write(tmp_path / "iso.csv", "user,item,timestamp\nu,a,2020-01-01\nu,b,2020-01-02\nu,c,2020-13-45\n")
    with pytest.raises(TimestampParseError, match=r"data row 3: cannot read '2020-13-45'"):
        load_tabular(iso)
    empty = _write(tmp_path / "e.csv", "user,item,timestamp\nu,a,\n")
    with pytest.raises(TimestampParseError, match="data row 1"):
        load_tabular(empty)


def test_unknown_event_type_names_the_value(tmp_path: Path) -> None:
    path = _write(tmp_path / "i.csv", "user,item,timestamp,type\nu,a,1,view\nu,b,2,wishlist\n")
    with pytest.raises(UnknownEventTypeError, match=r"data row 2: unknown event type 'wishlist'; known: view, click, add_to_cart, purchase, rating"):
        load_tabular(path)


def test_empty_files(tmp_path: Path) -> None:
    with pytest.raises(EmptyFileError, match="the file is empty"):
        load_tabular(_write(tmp_path / "zero.csv", ""))
    with pytest.raises(EmptyFileError, match=r"no data rows \(columns: user, item, timestamp\)"):
        load_tabular(_write(tmp_path / "header.csv", "user,item,timestamp\n"))
    empty_parquet = tmp_path / "empty.parquet"
    pd.DataFrame({"item_id": pd.Series([], dtype=str), "title": pd.Series([], dtype=str)}).to_parquet(empty_parquet)
    with pytest.raises(EmptyFileError, match="no data rows"):
        load_tabular(items=empty_parquet)


def test_invalid_cells(tmp_path: Path) -> None:
    with pytest.raises(InvalidValueError, match=r"column 'price', data row 1: 'cheap' is not a number"):
        load_tabular(items=_write(tmp_path / "a.csv", "item_id,title,price\na,A,cheap\n"))
    with pytest.raises(InvalidValueError, match=r"unknown availability 'maybe'"):
        load_tabular(items=_write(tmp_path / "b.csv", "item_id,title,availability\na,A,maybe\n"))
    with pytest.raises(InvalidValueError, match=r"column 'user', data row 2: empty id"):
        load_tabular(_write(tmp_path / "c.csv", "user,item,timestamp\nu,a,1\n,b,2\n"))
