"""The local infrastructure answers: Kafka round trip, Redis commands, `infra.sh status`."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_kafka_round_trip(
    kafka_bootstrap: str, create_topics: Callable[..., list[str]], unique: str
) -> None:
    (topic,) = create_topics([f"infra-{unique}"], partitions=2)
    sent = {f"k{i}".encode(): f"v{i}".encode() for i in range(20)}
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for key, value in sent.items():
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()

    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=f"g-{unique}",
        auto_offset_reset="earliest", enable_auto_commit=False,
    )
    received: dict[bytes, bytes] = {}
    partitions: dict[bytes, int] = {}
    try:
        consumer.subscribe([topic])
        for _ in range(60):
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    received[record.key] = record.value
                    partitions[record.key] = record.partition
            if len(received) >= len(sent):
                break
        consumer.commit()
        committed = {p: consumer.committed(TopicPartition(topic, p)) for p in (0, 1)}
    finally:
        consumer.close()

    assert received == sent
    assert set(partitions.values()) == {0, 1}
    assert sum(v or 0 for v in committed.values()) == len(sent)


def _rendered_broker_config() -> dict[str, str]:
    """The broker settings `infra.sh up` writes, as `infra.sh config` prints them."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "infra.sh"), "config"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    lines = [line.strip() for line in result.stdout.splitlines()]
    pairs = [line.split("=", 1) for line in lines if line and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


def test_rendered_broker_config_never_auto_creates_topics() -> None:
    config = _rendered_broker_config()
    assert config["auto.create.topics.enable"] == "false"
    assert config["num.partitions"] == "4"  # what contracts.topics creates by default
    assert not re.search(r"@[A-Z_]+@", "".join(config.values()))  # every placeholder rendered


def test_redis_ping_set_get(redis_url: str, unique: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"infra:{unique}"
    try:
        assert client.ping() is True
        assert client.set(key, "value", ex=60)
        assert client.get(key) == b"value"
    finally:
        client.delete(key)
        client.close()


def test_infra_status_reports_up(kafka_bootstrap: str, redis_url: str) -> None:
    env = dict(os.environ)
    env["KAFKA_PORT"] = kafka_bootstrap.split(",")[0].rsplit(":", 1)[1]
    env["REDIS_PORT"] = str(redis.connection.parse_url(redis_url).get("port", 6379))
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "infra.sh"), "status"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kafka: up" in result.stdout
    assert "redis: up" in result.stdout


def test_infra_status_fails_when_a_service_is_down() -> None:
    env = dict(os.environ, KAFKA_PORT="1", REDIS_PORT="1")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "infra.sh"), "status"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )
    assert result.returncode == 1
    assert "kafka: DOWN" in result.stdout
    assert "redis: DOWN" in result.stdout


@pytest.mark.cluster
def test_redis_cluster_status_names_three_masters_and_three_replicas(
    redis_cluster_url: str,
) -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "infra.sh"), "redis-cluster-status"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    nodes = re.findall(r"node (\d+): up, (master|slave), cluster_state:ok", result.stdout)
    assert sorted(port for port, _ in nodes) == [str(p) for p in range(7000, 7006)]
    assert sorted(role for _, role in nodes) == ["master"] * 3 + ["slave"] * 3


def test_redis_cluster_status_fails_when_no_node_is_up() -> None:
    env = dict(os.environ, REDIS_CLUSTER_PORT="1", REDIS_CLUSTER_NODES="2")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "infra.sh"), "redis-cluster-status"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )
    assert result.returncode == 1
    assert "redis cluster node 1: DOWN" in result.stdout
