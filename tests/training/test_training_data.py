"""Datasets from RecBole atomic files, CSV/Parquet files and the event log."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from protos import events_pb2
from training.data import (
    INSTACART_EPOCH_MS,
    DatasetError,
    from_event_log,
    read_instacart,
    read_recbole,
    read_tabular,
)
from training.eventlog import EventLog


def test_recbole_atomic_files(tmp_path: Path) -> None:
    directory = tmp_path / "shop"
    directory.mkdir()
    (directory / "shop.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "u1\tA (1995)\t5\t978300760\nu1\tB (1990)\t3\t978300761\nu2\tZ\t4\t978300000\n"
    )
    (directory / "shop.item").write_text(
        "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\n"
        "A (1995)\tA\t1995\tAnimation Comedy\nB (1990)\tB\t1990.0\tDrama\n"
    )
    data = read_recbole(directory)
    assert data.item_ids == ["A (1995)", "B (1990)", "Z"]
    assert data.item_texts == ["A. Animation, Comedy. Released in 1995",
                               "B. Drama. Released in 1990", "Z"]
    assert data.events.timestamps_ms.tolist() == [978300760000, 978300761000, 978300000000]
    assert set(data.events.event_types.tolist()) == {events_pb2.RATING}
    assert data.item_rows()["Z"] == 3
    with pytest.raises(DatasetError):
        read_recbole(tmp_path / "missing")


def test_tabular_files_with_aliases(tmp_path: Path) -> None:
    pd.DataFrame({
        "visitorid": ["v1", "v1", "v2"], "itemid": ["p1", "p2", "p1"],
        "timestamp": [1_600_000_000_000, 1_600_000_001_000, 1_600_000_002_000],
        "event": ["view", "addtocart", "transaction"],
    }).to_parquet(tmp_path / "events.parquet")
    (tmp_path / "items.csv").write_text(
        "product_id,name,category,description\np1,Drill,Tools|Power,Cordless\n"
    )
    data = read_tabular(tmp_path / "events.parquet", tmp_path / "items.csv")
    assert data.item_ids == ["p1", "p2"]
    assert data.item_texts == ["Drill. Tools, Power. Cordless", "p2"]
    assert data.events.event_types.tolist() == [
        events_pb2.VIEW, events_pb2.ADD_TO_CART, events_pb2.PURCHASE]
    assert data.events.timestamps_ms.tolist()[0] == 1_600_000_000_000
    (tmp_path / "iso.csv").write_text("user,item,time\nu,p1,2020-09-13T12:26:40Z\n")
    assert read_tabular(tmp_path / "iso.csv").events.timestamps_ms.tolist() == [1_600_000_000_000]


def test_event_log_with_catalog() -> None:
    log = EventLog(topic="events.enriched", ranges={0: (0, 2)})
    item = events_pb2.Item(item_id="b", title="Bee", categories=["Insects"])
    log.add(events_pb2.EnrichedEvent(
        event=events_pb2.Event(user_id="u", item_id="b", type=events_pb2.CLICK, timestamp_ms=5),
        item=item))
    log.add(events_pb2.EnrichedEvent(
        event=events_pb2.Event(user_id="u", item_id="q", type=events_pb2.PURCHASE,
                               timestamp_ms=6)))
    data = from_event_log(log, {"a": events_pb2.Item(item_id="a", title="Ant")})
    assert data.item_ids == ["a", "b", "q"]
    assert data.item_texts == ["Ant", "Bee. Insects", "q"]
    assert data.events.event_types.tolist() == [events_pb2.CLICK, events_pb2.PURCHASE]


def test_evaluate_command_on_csv_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.__main__ import main

    rows = ["user_id,item_id,timestamp"]
    for u in range(6):
        for t, item in enumerate(["a", "b", "c", "d"][: 3 + u % 2]):
            rows.append(f"u{u},{item},{1_600_000_000 + t}")
    (tmp_path / "events.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "result.json"
    code = main(["evaluate", "--interactions", str(tmp_path / "events.csv"),
                 "--models", "popular,item-knn", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result["models"]) == {"popular", "item-knn"}
    assert result["protocol"]["users"] == 6 and result["protocol"]["items"] == 4
    # every test target is c or d, among 4 candidates: all hit within 10
    assert result["models"]["popular"]["hr@10"] == 1.0
    assert "popular" in capsys.readouterr().out


def test_instacart_order_lines(tmp_path: Path) -> None:
    # Instacart's columns; lines out of order, a first order without days_since_prior
    (tmp_path / "orders.csv").write_text(
        ",order_id,user_id,order_number,order_dow,order_hour_of_day,days_since_prior_order,"
        "product_id,add_to_cart_order,reordered\n"
        "0,20,7,2,1,9,3.0,300,2.0,0.0\n"
        "1,10,7,1,0,8,,100,1.0,0.0\n"
        "2,20,7,2,1,9,3.0,100,1.0,1.0\n"
        "3,10,7,1,0,8,,200,2.0,0.0\n"
        "4,30,8,1,5,23,,100,1.0,0.0\n")
    dataset = read_instacart(tmp_path / "orders.csv")
    events = dataset.events
    assert list(events.user_ids) == ["7", "7", "7", "7", "8"]
    assert list(events.item_ids) == ["100", "200", "100", "300", "100"]  # cart order kept
    assert set(events.event_types) == {events_pb2.PURCHASE}
    day, hour = 86_400_000, 3_600_000
    assert list(events.timestamps_ms - INSTACART_EPOCH_MS) == [
        8 * hour + 1, 8 * hour + 2, 3 * day + 9 * hour + 1, 3 * day + 9 * hour + 2,
        23 * hour + 1]
    assert dataset.item_ids == ["100", "200", "300"] and dataset.item_texts == dataset.item_ids


def test_instacart_needs_its_columns(tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_text("user_id,product_id\n1,2\n")
    with pytest.raises(DatasetError, match="order_number"):
        read_instacart(tmp_path / "orders.csv")


def test_the_packaged_instacart_sample() -> None:
    from training.__main__ import instacart_sample

    dataset = read_instacart(instacart_sample())
    assert len(dataset.events) == 150_000 and len(set(dataset.events.user_ids)) == 593
    assert len(dataset.item_ids) == 14_190


def test_evaluate_command_on_instacart_lines(tmp_path: Path) -> None:
    from training.__main__ import main

    rows = ["order_id,user_id,order_number,order_hour_of_day,days_since_prior_order,"
            "product_id,add_to_cart_order"]
    for u in range(5):
        for order in (1, 2):
            for cart, product in enumerate(["p1", "p2"][: 1 + (u + order) % 2], start=1):
                rows.append(f"{u}{order},{u},{order},10,{'' if order == 1 else 7},"
                            f"{product},{cart}")
    (tmp_path / "orders.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "result.json"
    assert main(["evaluate", "--instacart", str(tmp_path / "orders.csv"), "--models",
                 "popular", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["protocol"]["events"] == 15 and result["protocol"]["items"] == 2
