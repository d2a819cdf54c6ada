"""Edge lists: reading and checking rows (no Kafka), and `python -m ingest relations`
against the real broker (the compacted topic, edge keys, tombstones)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from kafka.consumer.fetcher import ConsumerRecord

from contracts.relations import RelationLimits
from ingest.errors import InvalidRowsError, MissingColumnError
from ingest.relations import MAX_REPORTED_ROWS, read_relations
from protos import events_pb2

ROOT = Path(__file__).resolve().parents[2]
NOW_MS = 1_790_000_000_000
GOOD = """follower_id,followee_id,kind,timestamp,removed,share_name
alice,bob,follow,1700000000,,yes
a|b,carol,Friend,1700000001,,
alice,bob,follow,1700000002,true,
"""


def _write(tmp_path: Path, text: str, name: str = "edges.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_rows_become_relations_in_file_order(tmp_path: Path) -> None:
    relations = read_relations(_write(tmp_path, GOOD), {}, now_ms=NOW_MS)
    assert relations == [
        events_pb2.Relation(follower_id="alice", followee_id="bob", kind=events_pb2.FOLLOW,
                            timestamp_ms=1_700_000_000_000, share_name=True),
        events_pb2.Relation(follower_id="a|b", followee_id="carol", kind=events_pb2.FRIEND,
                            timestamp_ms=1_700_000_001_000),
        events_pb2.Relation(follower_id="alice", followee_id="bob", kind=events_pb2.FOLLOW,
                            timestamp_ms=1_700_000_002_000, removed=True),
    ]


def test_parquet_with_renamed_columns_and_no_timestamp_is_stamped_now(tmp_path: Path) -> None:
    path = tmp_path / "edges.parquet"
    pd.DataFrame({"src": ["u1"], "dst": ["u2"], "how": ["follow"],
                  "removed": [False], "share_name": [True]}).to_parquet(path)
    (relation,) = read_relations(path, {"kind": "how"}, now_ms=NOW_MS)
    assert relation == events_pb2.Relation(follower_id="u1", followee_id="u2",
                                           kind=events_pb2.FOLLOW, timestamp_ms=NOW_MS,
                                           share_name=True)


def test_bad_rows_are_named_by_row_column_and_reason(tmp_path: Path) -> None:
    path = _write(tmp_path, """follower,followee,kind
alice,bob,follow
carol,carol,friend
dave,erin,likes
,frank,follow
""" + "x" * 70 + ",gina,follow\n")
    with pytest.raises(InvalidRowsError) as caught:
        read_relations(path, {}, now_ms=NOW_MS, limits=RelationLimits(max_id_chars=64))
    assert str(caught.value).splitlines() == [
        f"{path}: 4 of 5 rows are invalid, nothing was sent:",
        "  data row 2, column 'followee': followee_id is the follower_id: a user cannot "
        "relate to themself (self_relation)",
        "  data row 3, column 'kind': unknown kind 'likes'; known: follow, friend "
        "(unknown_relation_kind)",
        "  data row 4, column 'follower': follower_id is empty (missing_field)",
        "  data row 5, column 'follower': follower_id is longer than 64 characters (too_long)",
    ]


def test_bad_flags_times_and_sizes_are_row_errors_the_first_ones_listed(tmp_path: Path) -> None:
    path = _write(tmp_path, "follower_id,followee_id,kind,time,share_name\n"
                  "a,b,follow,1600000000,maybe\nb,a,follow,700000000,\n"
                  + "c,d,follow,1600000000,\n" * 30)
    with pytest.raises(InvalidRowsError) as caught:
        read_relations(path, {}, now_ms=NOW_MS, limits=RelationLimits(max_bytes=10))
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}: 32 of 32 rows are invalid, nothing was sent:"
    assert lines[1:4] == [
        "  data row 1, column 'share_name': 'maybe' is not true/false, yes/no or 1/0 (bad_value)",
        "  data row 1, the row: 15 bytes > limit 10 (oversized)",
        "  data row 2, column 'time': timestamp_ms 700000000000 is before 1995-01-01 "
        "(bad_timestamp)",
    ]
    assert len(lines) == 1 + MAX_REPORTED_ROWS + 1 and lines[-1] == "  ... and 14 more problems"


def test_a_missing_column_is_named(tmp_path: Path) -> None:
    with pytest.raises(MissingColumnError, match="required column 'kind' not found"):
        read_relations(_write(tmp_path, "follower_id,followee_id\na,b\n"), {}, now_ms=NOW_MS)


def _run_ingest(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.integration
def test_cli_produces_edges_to_the_compacted_topic_and_refuses_bad_files(
    tmp_path: Path, kafka_bootstrap: str, owned_topics: str,
    read_topic: Callable[[str], list[ConsumerRecord]], describe_topics: Callable[..., dict],
) -> None:
    topic = f"relations-{owned_topics}"
    env = {"STREAMREC_INGEST_KAFKA_BOOTSTRAP": kafka_bootstrap,
           "STREAMREC_INGEST_TOPIC_RELATIONS": topic}
    bad = _run_ingest(["relations", str(_write(tmp_path, "follower_id,followee_id,kind\n"
                                                "a,b,follow\nc,c,follow\n", "bad.csv"))], env)
    assert bad.returncode == 2
    assert "bad.csv: 1 of 2 rows are invalid, nothing was sent:" in bad.stderr
    assert "data row 2, column 'followee_id'" in bad.stderr
    assert describe_topics([topic]) == {}  # refused before anything was created or sent

    result = _run_ingest(["relations", str(_write(tmp_path, GOOD)), "--no-progress"], env)
    assert result.returncode == 0, result.stderr
    assert f"relations sent: 3 -> {topic} (1 removals)" in result.stdout
    assert describe_topics([topic])[topic][1]["cleanup.policy"] == "compact"
    records = read_topic(topic)
    by_key: dict[str, list[bytes | None]] = {}
    for record in records:
        by_key.setdefault(record.key.decode(), []).append(record.value)
    assert set(by_key) == {"alice|bob|follow", "a%7Cb|carol|friend"}
    made, tombstone = by_key["alice|bob|follow"]  # one partition per edge keeps file order
    assert events_pb2.Relation.FromString(made).share_name and tombstone is None
