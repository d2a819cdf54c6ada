"""The ``dlq`` command: summaries by reason, and re-drive at most once, on the real Kafka."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from protos import events_pb2
from contracts.deadletters import UNREADABLE, decode, selected, summarise
from streams.deadletters import list_letters, redrive
from streams.settings import StreamsSettings

ROOT = Path(__file__).resolve().parents[2]


def letter(reason: str, payload: bytes, *, key: bytes = b"u1",
           origin: str = "events") -> events_pb2.DeadLetter:
    return events_pb2.DeadLetter(payload=payload, key=key, reason=reason, detail=f"{reason}!",
                                 origin_topic=origin, origin_partition=0, origin_offset=7)


def test_undecodable_records_on_the_dlq_are_reported_not_redriven() -> None:
    bad = decode(b"\xff\xff\xff")
    assert bad.reason == UNREADABLE
    assert not selected(bad, frozenset())
    assert selected(letter("unknown_item", b"x"), frozenset())
    assert selected(letter("unknown_item", b"x"), frozenset({"unknown_item"}))
    assert not selected(letter("bad_timestamp", b"x"), frozenset({"unknown_item"}))
    assert not selected(letter("unknown_item", b"x", origin=""), frozenset())


def test_summary_counts_by_reason_and_keeps_examples() -> None:
    letters = [letter("unknown_item", b"a"), letter("unknown_item", b"b"),
               letter("undecodable", b"c", origin="items")]
    summary = summarise(letters, frozenset(), keep=1)
    assert summary.by_reason == {"unknown_item": 2, "undecodable": 1}
    assert summary.by_origin == {"events": 2, "items": 1}
    assert len(summary.examples["unknown_item"]) == 1
    text = "\n".join(summary.lines())
    assert "3 dead letters" in text and "unknown_item" in text and "events[0]@7" in text
    assert summarise(letters, frozenset({"undecodable"}), keep=1).by_reason == {"undecodable": 1}


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[dict[str, str]]:
    suffix = uuid.uuid4().hex[:10]
    names = {"dlq": f"events.dlq-{suffix}", "events": f"events-{suffix}"}
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)
                         for name in names.values()])
    try:
        yield names
    finally:
        admin.delete_topics(list(names.values()))
        admin.close()


def read_all(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    consumer.assign([TopicPartition(topic, p) for p in (0, 1)])
    records = [(record.key, record.value) for record in consumer]
    consumer.close()
    return records


@pytest.mark.integration
def test_redrive_sends_original_bytes_back_once(kafka_bootstrap: str,
                                                topics: dict[str, str]) -> None:
    settings = StreamsSettings(kafka_bootstrap=kafka_bootstrap, topic_dlq=topics["dlq"],
                               app_id=f"dlq-test-{uuid.uuid4().hex[:8]}")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for payload, reason in ((b"p1", "unknown_item"), (b"p2", "unknown_item"),
                            (b"p3", "bad_timestamp")):
        value = letter(reason, payload, key=payload + b"-key", origin=topics["events"])
        producer.send(topics["dlq"], key=payload + b"-key", value=value.SerializeToString())
    producer.send(topics["dlq"], value=b"\xff\xff not a dead letter")
    producer.flush()

    summary = list_letters(settings, frozenset(), show=2)
    assert summary.by_reason == {"unknown_item": 2, "bad_timestamp": 1, UNREADABLE: 1}

    assert redrive(settings, frozenset({"unknown_item"}), None, dry_run=True) == {"unknown_item": 2}
    assert read_all(kafka_bootstrap, topics["events"]) == []

    sent = redrive(settings, frozenset({"unknown_item"}), None, dry_run=False)
    assert sent == {"unknown_item": 2}
    assert sorted(read_all(kafka_bootstrap, topics["events"])) == [
        (b"p1-key", b"p1"), (b"p2-key", b"p2")]

    # Progress is committed per reason: nothing is re-driven twice, and the other reason
    # is still there for its own fix.
    assert redrive(settings, frozenset({"unknown_item"}), None, dry_run=False) == {}
    assert redrive(settings, frozenset({"unknown_item", "bad_timestamp"}), None,
                   dry_run=False) == {"bad_timestamp": 1}
    assert len(read_all(kafka_bootstrap, topics["events"])) == 3
    with pytest.raises(ValueError):
        redrive(settings, frozenset(), None, dry_run=False)
    producer.close()


KAFKA_CLIENT_LINE = re.compile(r"\b(INFO|DEBUG) (kafka|aiokafka)[.:]")


def _dlq_list(kafka_bootstrap: str, dlq: str, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMREC_STREAMS_KAFKA_BOOTSTRAP": kafka_bootstrap,
           "STREAMREC_STREAMS_TOPIC_DLQ": dlq}
    return subprocess.run([sys.executable, "-m", "streams", "dlq", "list", *flags], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.integration
def test_dlq_list_prints_its_table_without_kafka_client_chatter(
    kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    value = letter("unknown_item", b"p1", origin=topics["events"]).SerializeToString()
    producer.send(topics["dlq"], key=b"u1", value=value).get(timeout=30)
    producer.close()

    quiet = _dlq_list(kafka_bootstrap, topics["dlq"])
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.splitlines()[0] == "1 dead letters"
    assert not KAFKA_CLIENT_LINE.search(quiet.stdout + quiet.stderr), quiet.stderr
    assert "\r" not in quiet.stderr  # no progress bar off a terminal

    verbose = _dlq_list(kafka_bootstrap, topics["dlq"], "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert KAFKA_CLIENT_LINE.search(verbose.stderr)  # asked for: there they are
