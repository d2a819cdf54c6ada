"""Command line parsing and the Kafka-free `stats` command."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.__main__ import main, parse_column_map, parse_instant
from ingest.errors import ReplayOptionError


def test_stats_on_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "log.csv").write_text(
        "uid,item,timestamp,event_type\nu1,a,1600000000,view\nu2,b,1600000001,purchase\n"
        "u1,b,1600000002,view\n"
    )
    code = main(["stats", "--interactions", str(tmp_path / "log.csv"), "--column", "user_id=uid"])
    out = capsys.readouterr().out
    assert code == 0
    assert "dataset:       log" in out
    assert "interactions:  3" in out
    assert "users:         2" in out
    assert "items:         2 (2 without metadata)" in out
    assert "view 2, purchase 1" in out
    assert "2020-09-13T12:26:40+00:00 .. 2020-09-13T12:26:42+00:00" in out


def test_bad_input_exits_2_with_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--interactions", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv: no such file" in capsys.readouterr().err
    assert main(["stats"]) == 2
    assert "give --source movielens" in capsys.readouterr().err
    assert main(["replay", "--interactions", "x.csv", "--start", "yesterday"]) == 2
    assert "--start must be ISO-8601" in capsys.readouterr().err


def test_bad_setting_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STREAMREC_INGEST_MAX_BATCH_BYTES", "10")
    assert main(["stats", "--source", "movielens"]) == 2
    assert "max_batch_bytes" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2000-01-01", 946_684_800_000),
        ("2000-01-01T01:00:00+01:00", 946_684_800_000),
        ("946684800", 946_684_800_000),
        ("946684800000", 946_684_800_000),
    ],
)
def test_parse_instant(text: str, expected: int) -> None:
    assert parse_instant(text, "--start") == expected


def test_parse_column_map() -> None:
    assert parse_column_map(["user_id=uid", " item_id = sku "]) == {"user_id": "uid", "item_id": "sku"}
    with pytest.raises(ReplayOptionError, match="FIELD=NAME"):
        parse_column_map(["user_id"])
