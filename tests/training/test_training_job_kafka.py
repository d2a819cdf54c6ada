"""One training run against the real broker: fresh topics in, artifact and release out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from protos import events_pb2
from training.announce import prepare_topics
from training.__main__ import roll_back
from contracts.artifact import (
    pretrained_item_encoder,
    read_manifest,
    read_production,
    read_version,
)
from contracts.encoder import ItemEncoder
from training.errors import EmptyLogError
from training.job import run_once, run_trained
from training.settings import TrainingSettings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ITEMS = {
    "toy": ("Toy Story", ["Animation", "Comedy"]),
    "toy2": ("Toy Story 2", ["Animation", "Comedy"]),
    "heat": ("Heat", ["Action", "Crime"]),
    "ronin": ("Ronin", ["Action", "Crime"]),
    "drill": ("Hammer drill", ["Tools"]),
}
# (user, item) in time order; the last event of each user is held out
EVENTS = [
    ("ann", "toy"), ("bob", "heat"), ("ann", "drill"), ("cy", "toy2"),
    ("bob", "ronin"), ("ann", "toy2"), ("cy", "toy"), ("dee", "heat"),
]


def _settings(
    unique: str,
    kafka_bootstrap: str,
    store: Path,
    create_topics: Callable[..., list[str]],
    **overrides: Any,
) -> TrainingSettings:
    """Settings on fresh topics, created like the real ones (deleted after the test)."""
    create_topics([f"events.enriched-{unique}", f"models-{unique}"])
    create_topics([f"items-{unique}", f"item-vectors-{unique}"], config={"cleanup.policy": "compact"})
    create_topics([f"model-routing-{unique}"], partitions=1, config={"cleanup.policy": "compact"})
    return TrainingSettings(
        kafka_bootstrap=kafka_bootstrap,
        topic_enriched=f"events.enriched-{unique}",
        topic_items=f"items-{unique}",
        topic_models=f"models-{unique}",
        topic_routing=f"model-routing-{unique}",
        topic_item_vectors=f"item-vectors-{unique}",
        artifact_dir=store,
        read_timeout_s=20,
        **overrides,
    )


def _produce(producer: KafkaProducer, settings: TrainingSettings) -> dict[int, int]:
    """Produce the catalog and the log; return the number of log records per partition."""
    for item_id, (title, categories) in ITEMS.items():
        item = events_pb2.Item(item_id=item_id, title=title, categories=categories)
        producer.send(settings.topic_items, key=item_id.encode(), value=item.SerializeToString())
    per_partition: dict[int, int] = {}
    for offset, (user, item_id) in enumerate(EVENTS):
        title, categories = ITEMS[item_id]
        enriched = events_pb2.EnrichedEvent(
            event=events_pb2.Event(
                event_id=f"e{offset}", user_id=user, item_id=item_id,
                type=events_pb2.VIEW, timestamp_ms=1_600_000_000_000 + offset * 1000,
            ),
            item=events_pb2.Item(item_id=item_id, title=title, categories=categories),
            weight=1.0,
        )
        sent = producer.send(
            settings.topic_enriched, key=user.encode(), value=enriched.SerializeToString()
        ).get(timeout=30)
        per_partition[sent.partition] = max(per_partition.get(sent.partition, 0), sent.offset + 1)
    producer.flush()
    return per_partition


def _records(consumer: KafkaConsumer, topic: str) -> list[ConsumerRecord]:
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    ends = consumer.end_offsets(partitions)
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    records: list[ConsumerRecord] = []
    while any(consumer.position(tp) < ends[tp] for tp in partitions):
        for batch in consumer.poll(timeout_ms=1000).values():
            records.extend(batch)
    consumer.unsubscribe()
    return records


def test_run_writes_promotes_and_announces(
    kafka_bootstrap: str,
    unique: str,
    create_topics: Callable[..., list[str]],
    tmp_path: Path,
    consumer: KafkaConsumer,
    producer: KafkaProducer,
    cpu_encoder: ItemEncoder,
) -> None:
    settings = _settings(unique, kafka_bootstrap, tmp_path / "store", create_topics)
    produced = _produce(producer, settings)

    first = run_once(settings, consumer=consumer, producer=producer, encoder=cpu_encoder, progress=False)

    assert first.n_events == len(EVENTS) and first.n_items == len(ITEMS)
    assert sorted(p.name for p in first.path.iterdir()) == [
        "index.faiss", "item_ids.json", "item_text_hashes.npy", "item_vectors.npy",
        "manifest.json"
    ]
    manifest = read_manifest(settings.artifact_dir / first.version, first.version)
    partitions = manifest["data_window"]["partitions"]
    assert manifest["data_window"]["topic"] == settings.topic_enriched
    assert sorted(partitions) == ["0", "1", "2", "3"]
    assert {int(p): r for p, r in partitions.items() if r != [0, 0]} == {
        p: [0, end] for p, end in produced.items()
    }
    assert manifest["n_events"] == len(EVENTS) and manifest["n_items"] == len(ITEMS)
    # the limit the vectors were embedded with, for streams to embed new items alike
    assert manifest["item_encoder"] == pretrained_item_encoder(cpu_encoder.max_length)
    assert manifest["item_encoder"]["max_length"] == 64
    assert manifest["metrics"]["users"] == 3  # dee has one event only
    assert 0.0 <= manifest["metrics"]["model"]["hr@10"] <= 1.0
    assert manifest["config"]["topic_enriched"] == settings.topic_enriched
    stored = read_version(settings.artifact_dir / first.version, first.version)
    ids, vectors = stored.item_ids, stored.vectors
    assert ids == sorted(ITEMS) and vectors.shape == (5, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert read_production(settings.artifact_dir).version == first.version  # type: ignore[union-attr]

    second = run_once(
        settings.model_copy(update={"publish_item_vectors": True}),
        consumer=consumer, producer=producer, encoder=cpu_encoder, progress=False,
    )
    assert second.version > first.version and second.previous == first.version
    pointer = json.loads((settings.artifact_dir / "production.json").read_text())
    assert (pointer["version"], pointer["previous"]) == (second.version, first.version)

    releases = [
        (r.key, events_pb2.ModelRelease.FromString(r.value))
        for r in _records(consumer, settings.topic_models)
    ]
    assert [key for key, _ in releases] == [b"release", b"release"]
    assert [(m.version, m.previous_version, m.action) for _, m in releases] == [
        (first.version, "", "promote"), (second.version, first.version, "promote")
    ]
    assert releases[1][1].uri == str(second.path.resolve())
    routings = [(r.key, events_pb2.Routing.FromString(r.value))
                for r in _records(consumer, settings.topic_routing)]
    assert [key for key, _ in routings] == [b"routing", b"routing"]
    assert [(r.production, r.previous, r.revision, r.change, r.changed_by) for _, r in routings] == [
        (first.version, "", 1, "promote", "training"), (second.version, first.version, 2, "promote", "training")
    ]
    assert (routings[1][1].production_uri, routings[1][1].previous_uri) == (
        str(second.path.resolve()), str(first.path.resolve()))

    roll_back(settings)  # python -m training rollback
    back = events_pb2.Routing.FromString(_records(consumer, settings.topic_routing)[-1].value)
    assert (back.production, back.previous, back.revision, back.change) == (
        first.version, second.version, 3, "rollback")
    item_vectors = [events_pb2.ItemVector.FromString(r.value) for r in _records(consumer, settings.topic_item_vectors)]
    assert sorted(v.item_id for v in item_vectors) == sorted(ITEMS)
    assert {v.model_version for v in item_vectors} == {second.version}
    assert all(len(v.vector) == 384 for v in item_vectors)


def test_max_events_reads_the_newest(
    kafka_bootstrap: str, unique: str, create_topics: Callable[..., list[str]], tmp_path: Path,
    consumer: KafkaConsumer, producer: KafkaProducer, cpu_encoder: ItemEncoder,
) -> None:
    settings = _settings(unique, kafka_bootstrap, tmp_path / "store", create_topics, max_events=5)
    _produce(producer, settings)
    summary = run_once(settings, consumer=consumer, producer=producer, encoder=cpu_encoder, progress=False)
    assert summary.n_events == 5
    window = read_manifest(settings.artifact_dir / summary.version, summary.version)["data_window"]["partitions"]
    assert sum(end - start for start, end in window.values()) == 5


def test_empty_log_fails_clearly(
    kafka_bootstrap: str, unique: str, create_topics: Callable[..., list[str]], tmp_path: Path,
    consumer: KafkaConsumer, producer: KafkaProducer, cpu_encoder: ItemEncoder,
) -> None:
    settings = _settings(unique, kafka_bootstrap, tmp_path / "store", create_topics)
    with pytest.raises(EmptyLogError, match=f"no events in {settings.topic_enriched}"):
        run_once(settings, consumer=consumer, producer=producer, encoder=cpu_encoder, progress=False)
    assert not (tmp_path / "store").exists()

    env = {
        **os.environ,
        "STREAMREC_TRAINING_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "STREAMREC_TRAINING_TOPIC_ENRICHED": settings.topic_enriched,
        "STREAMREC_TRAINING_ARTIFACT_DIR": str(tmp_path / "store"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "training"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 2
    assert f"error: no events in {settings.topic_enriched}" in result.stderr


def _produce_cycles(producer: KafkaProducer, settings: TrainingSettings) -> int:
    """Users walk the catalog in a cycle (toy -> toy2 -> heat -> ronin -> drill -> toy)."""
    order = sorted(ITEMS)
    for item_id in order:
        title, categories = ITEMS[item_id]
        item = events_pb2.Item(item_id=item_id, title=title, categories=categories)
        producer.send(settings.topic_items, key=item_id.encode(), value=item.SerializeToString())
    count = 0
    for u in range(12):
        for t in range(6):
            item_id = order[(u + t) % len(order)]
            enriched = events_pb2.EnrichedEvent(
                event=events_pb2.Event(
                    event_id=f"c{u}-{t}", user_id=f"user{u}", item_id=item_id,
                    type=events_pb2.CLICK, timestamp_ms=1_600_000_000_000 + t * 60_000,
                ),
                weight=1.0,
            )
            producer.send(settings.topic_enriched, key=f"user{u}".encode(),
                          value=enriched.SerializeToString())
            count += 1
    producer.flush()
    return count


@pytest.mark.slow
def test_trained_run_gates_promotion(
    kafka_bootstrap: str, unique: str, create_topics: Callable[..., list[str]], tmp_path: Path,
    consumer: KafkaConsumer, producer: KafkaProducer,
) -> None:
    settings = _settings(unique, kafka_bootstrap, tmp_path / "store", create_topics,
                         max_epochs=20, max_len=8, device="cpu")
    n_events = _produce_cycles(producer, settings)

    first = run_trained(settings, consumer=consumer, producer=producer, progress=False)
    assert first.promoted and first.current is None and first.n_events == n_events
    assert read_production(settings.artifact_dir).version == first.version  # type: ignore[union-attr]
    names = sorted(p.name for p in first.path.iterdir())
    assert {"user_encoder.pt2", "item_encoder", "item_head.npz", "model.pt",
            "item_text_hashes.npy"} <= set(names)
    manifest = read_manifest(settings.artifact_dir / first.version, first.version)
    assert manifest["user_encoder"]["kind"] == "transformer"
    assert manifest["metrics"]["gate"]["passed"] is True
    curve = manifest["metrics"]["training"]  # the loss curve the operator console draws
    assert len(curve["losses"]) == curve["epochs"] >= 1
    assert all(loss > 0 for loss in curve["losses"])

    # an unreachable gate: the candidate is written, production stays, nothing announced
    blocked = run_trained(settings.model_copy(update={"gate_min_gain": 1.0}),
                          consumer=consumer, producer=producer, progress=False)
    assert not blocked.promoted and blocked.production == first.version
    assert blocked.current is not None  # production was scored from its files
    assert blocked.current["hr@10"] == pytest.approx(first.candidate["hr@10"], abs=0.2)
    assert read_production(settings.artifact_dir).version == first.version  # type: ignore[union-attr]
    releases = [events_pb2.ModelRelease.FromString(r.value)
                for r in _records(consumer, settings.topic_models)]
    assert [m.version for m in releases] == [first.version]


def test_a_run_first_creates_the_topics_it_writes(
    kafka_bootstrap: str, owned_topics: str, tmp_path: Path, describe_topics: Callable[..., dict],
) -> None:
    settings = TrainingSettings(
        kafka_bootstrap=kafka_bootstrap, topic_models=f"models-{owned_topics}",
        topic_item_vectors=f"item-vectors-{owned_topics}", publish_item_vectors=True,
        topic_partitions=3, log_retention_ms=86_400_000, artifact_dir=tmp_path,
    )
    prepare_topics(settings)
    found = describe_topics([settings.topic_models, settings.topic_item_vectors])
    models, vectors = found[settings.topic_models], found[settings.topic_item_vectors]
    assert models[0] == 1 and models[1]["cleanup.policy"] == "delete"  # releases in order
    assert models[1]["retention.ms"] == "86400000"
    assert vectors[0] == 3 and vectors[1]["cleanup.policy"] == "compact"


@pytest.mark.slow
def test_a_trained_run_under_torchrun_writes_and_announces_once(
    kafka_bootstrap: str, unique: str, create_topics: Callable[..., list[str]], tmp_path: Path,
    consumer: KafkaConsumer, producer: KafkaProducer,
) -> None:
    """``torchrun --nproc-per-node 2 -m training run``: two ranks train the shipped model
    (text tower included) together; rank 0 alone reads, writes, promotes and announces."""
    settings = _settings(unique, kafka_bootstrap, tmp_path / "store", create_topics)
    n_events = _produce_cycles(producer, settings)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **{
        f"STREAMREC_TRAINING_{name.upper()}": str(value) for name, value in {
            "kafka_bootstrap": kafka_bootstrap, "topic_enriched": settings.topic_enriched,
            "topic_items": settings.topic_items, "topic_models": settings.topic_models,
            "topic_routing": settings.topic_routing,
            "topic_item_vectors": settings.topic_item_vectors,
            "artifact_dir": settings.artifact_dir, "read_timeout_s": 20, "max_epochs": 5,
            "max_len": 8, "device": "cpu"}.items()}}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "training", "run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("version:") == 1  # rank 0's summary only
    pointer = read_production(settings.artifact_dir)
    assert pointer is not None
    manifest = read_manifest(settings.artifact_dir / pointer.version, pointer.version)
    assert manifest["n_events"] == n_events
    assert manifest["metrics"]["training"]["epochs"] == 5
    releases = [events_pb2.ModelRelease.FromString(r.value)
                for r in _records(consumer, settings.topic_models)]
    assert [m.version for m in releases] == [pointer.version]
