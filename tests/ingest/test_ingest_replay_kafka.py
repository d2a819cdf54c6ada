"""Replay a small CSV data set to fresh topics on the real broker and read it back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka.consumer.fetcher import ConsumerRecord

from ingest.dataset import event_id
from protos import events_pb2

pytestmark = pytest.mark.integration

ReadTopic = Callable[[str], list[ConsumerRecord]]
ROOT = Path(__file__).resolve().parents[2]
INTERACTIONS = """user,item,timestamp,event_type,value
u1,p1,1600000003,view,
u2,p2,1600000001,click,
u1,p2,1600000003,add_to_cart,1
u3,p3,1600000002,purchase,19.5
u2,p1,1600000004,view,
u1,p3,1600000000,rating,4
"""
ITEMS = """item_id,title,description,categories,price,availability
p1,Red Shoe,Comfortable,Shoes|Red,49.9,in_stock
p2,Blue Hat,,Hats,12,out_of_stock
"""
# time order with ties in file order -> source rows
EXPECTED_ROWS = [5, 1, 3, 0, 2, 4]


def _run_ingest(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    interactions = tmp_path / "shop.csv"
    interactions.write_text(INTERACTIONS)
    items = tmp_path / "items.csv"
    items.write_text(ITEMS)
    return interactions, items


@pytest.fixture
def env(kafka_bootstrap: str, owned_topics: str) -> dict[str, str]:
    """Fresh topic names; ingest creates the topics itself (deleted after the test)."""
    unique = owned_topics
    return {
        "STREAMREC_INGEST_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "STREAMREC_INGEST_TOPIC_EVENTS": f"events-{unique}",
        "STREAMREC_INGEST_TOPIC_ITEMS": f"items-{unique}",
        "STREAMREC_INGEST_TOPIC_RELATIONS": f"relations-{unique}",
    }


def _events(records: list[ConsumerRecord]) -> list[tuple[str, events_pb2.Event]]:
    return [(r.key.decode(), events_pb2.Event.FromString(r.value)) for r in records]


def test_replay_sends_catalog_then_events_in_time_order(
    files: tuple[Path, Path], env: dict[str, str], read_topic: ReadTopic
) -> None:
    interactions, items = files
    result = _run_ingest(
        ["replay", "--interactions", str(interactions), "--items", str(items),
         "--speedup", "0", "--no-progress"],
        env,
    )
    assert result.returncode == 0, result.stderr
    assert "items sent:   3" in result.stdout and "events sent:  6" in result.stdout

    catalog = {
        r.key.decode(): events_pb2.Item.FromString(r.value)
        for r in read_topic(env["STREAMREC_INGEST_TOPIC_ITEMS"])
    }
    assert sorted(catalog) == ["p1", "p2", "p3"]
    shoe = catalog["p1"]
    assert (shoe.title, shoe.description, list(shoe.categories)) == ("Red Shoe", "Comfortable", ["Shoes", "Red"])
    assert shoe.price == pytest.approx(49.9) and shoe.availability == events_pb2.IN_STOCK
    assert catalog["p2"].availability == events_pb2.OUT_OF_STOCK
    assert catalog["p3"].title == "p3"  # interacted, not in the items file

    events = _events(read_topic(env["STREAMREC_INGEST_TOPIC_EVENTS"]))
    assert all(key == event.user_id for key, event in events)
    by_id = {event.event_id: event for _, event in events}
    lines = INTERACTIONS.splitlines()[1:]
    expected_ids = []
    for row in EXPECTED_ROWS:
        user, item, seconds, _, _ = lines[row].split(",")
        expected_ids.append(event_id("shop", row, user, item, int(seconds) * 1000))
    assert sorted(by_id) == sorted(expected_ids)
    for user in ("u1", "u2", "u3"):  # one partition per user: its events arrive in time order
        produced = [event.event_id for _, event in events if event.user_id == user]
        assert produced == [i for i in expected_ids if by_id[i].user_id == user]
    cart = next(e for _, e in events if e.type == events_pb2.ADD_TO_CART)
    assert (cart.user_id, cart.item_id, cart.timestamp_ms, cart.value) == ("u1", "p2", 1_600_000_003_000, 1.0)
    assert next(e for _, e in events if e.type == events_pb2.PURCHASE).value == 19.5


def test_selection_pacing_and_rebase(
    files: tuple[Path, Path], env: dict[str, str], read_topic: ReadTopic
) -> None:
    interactions, items = files
    before_ms = int(time.time() * 1000)
    result = _run_ingest(
        ["replay", "--interactions", str(interactions), "--items", str(items),
         "--users", "2", "--limit", "3", "--rate", "50", "--rebase-now", "--skip-catalog",
         "--no-progress"],
        env,
    )
    after_ms = int(time.time() * 1000)
    assert result.returncode == 0, result.stderr
    assert read_topic(env["STREAMREC_INGEST_TOPIC_ITEMS"]) == []
    events = [event for _, event in _events(read_topic(env["STREAMREC_INGEST_TOPIC_EVENTS"]))]
    # first two users in time order are u1 (t=0) and u2 (t=1); first three of their events:
    assert sorted((e.user_id, e.item_id) for e in events) == [("u1", "p1"), ("u1", "p3"), ("u2", "p2")]
    stamps = sorted(e.timestamp_ms for e in events)
    assert before_ms <= stamps[-1] <= after_ms  # the last selected event happens "now"
    assert stamps[-1] - stamps[0] == 3_000  # gaps kept
    original = event_id("shop", 5, "u1", "p3", 1_600_000_000_000)
    assert original in {e.event_id for e in events}  # ids come from the source, not the shift


def test_catalog_command_and_unreachable_kafka(
    files: tuple[Path, Path], env: dict[str, str], read_topic: ReadTopic
) -> None:
    _, items = files
    result = _run_ingest(["catalog", "--items", str(items), "--no-progress"], env)
    assert result.returncode == 0, result.stderr
    assert sorted(r.key.decode() for r in read_topic(env["STREAMREC_INGEST_TOPIC_ITEMS"])) == ["p1", "p2"]
    down = _run_ingest(
        ["catalog", "--items", str(items), "--no-progress"],
        {**env, "STREAMREC_INGEST_KAFKA_BOOTSTRAP": "127.0.0.1:1"},
    )
    assert down.returncode == 3
    assert "error: Kafka at 127.0.0.1:1" in down.stderr


def test_ingest_creates_its_topics_with_the_contract_settings(
    files: tuple[Path, Path], env: dict[str, str], describe_topics: Callable[..., dict]
) -> None:
    interactions, items = files
    topics = [env["STREAMREC_INGEST_TOPIC_ITEMS"], env["STREAMREC_INGEST_TOPIC_EVENTS"]]
    assert describe_topics(topics) == {}
    result = _run_ingest(["replay", "--interactions", str(interactions), "--items", str(items),
                          "--speedup", "0"],
                         {**env, "STREAMREC_INGEST_TOPIC_PARTITIONS": "3"})
    assert result.returncode == 0, result.stderr
    # stderr is no terminal: progress is a log line at start and end, never a bar
    assert "\r" not in result.stderr
    progress = [line for line in result.stderr.splitlines() if " progress: " in line]
    assert [line.split(" progress: ")[1].split(" ")[:2] for line in progress] == [
        ["items:", "0/3"], ["items:", "3/3"], ["events:", "0/6"], ["events:", "6/6"]]
    found = describe_topics(topics)
    assert found[topics[0]][0] == found[topics[1]][0] == 3
    assert found[topics[0]][1]["cleanup.policy"] == "compact"
    assert found[topics[1]][1]["cleanup.policy"] == "delete"


def test_catalog_into_an_uncompacted_topic_says_how_to_fix_it(
    files: tuple[Path, Path], env: dict[str, str], create_topics: Callable[..., list[str]],
    describe_topics: Callable[..., dict],
) -> None:
    _interactions, items = files
    (topic,) = create_topics([env["STREAMREC_INGEST_TOPIC_ITEMS"]],
                             config={"cleanup.policy": "delete"})
    result = _run_ingest(["catalog", "--items", str(items), "--no-progress"], env)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "cleanup.policy" in line]
    assert len(lines) == 1, result.stderr
    assert "python -m ingest topics fix" in lines[0] and f"--entity-name {topic}" in lines[0]

    fixed = _run_ingest(["topics", "fix"], env)
    assert fixed.returncode == 0, fixed.stderr
    assert f"{topic}: cleanup.policy delete -> compact" in fixed.stdout
    assert describe_topics([topic])[topic][1]["cleanup.policy"] == "compact"
