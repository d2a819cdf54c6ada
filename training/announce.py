"""Tell the other deployables about a release: `ModelRelease` on ``models`` (streams
re-embeds), the next `Routing` record on ``model-routing`` (serving makes the version
production), and optionally the version's item vectors on ``item-vectors``.

The routing record is computed from the one in force (read from the compacted topic's
beginning), so a release and serving's Admin changes make one ordered history on one
partition (contracts/routing.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from contracts import routing as contract
from contracts.security import KafkaSecurity, kafka_kwargs
from contracts.topics import ITEM_VECTORS, MODELS, ROUTING, TopicSpec, ensure_topics, spec
from protos import events_pb2
from training.settings import TrainingSettings

RELEASE_KEY = b"release"
_SEND_TIMEOUT_S = 30.0


def written_topics(settings: TrainingSettings) -> list[TopicSpec]:
    """The topics a run writes: ``models`` and, when it publishes them, ``item-vectors``."""
    return [spec(MODELS, settings.topic_models, settings),
            spec(ROUTING, settings.topic_routing, settings),
            *([spec(ITEM_VECTORS, settings.topic_item_vectors, settings)]
              if settings.publish_item_vectors else [])]


def prepare_topics(settings: TrainingSettings) -> None:
    """Create the topics a run writes, with their contract settings, before it starts:
    the broker never auto-creates them, and a run should not fail only at its end."""
    asyncio.run(ensure_topics(settings.kafka_bootstrap, written_topics(settings),
                              client_id="streamrec-training-setup", security=settings))


def release_message(
    *, version: str, uri: str, created_at_ms: int, previous_version: str | None,
    action: str = "promote",
) -> events_pb2.ModelRelease:
    """A release of `version`: ``promote`` (a new version) or ``rollback`` (back to one)."""
    if action not in ("promote", "rollback"):
        raise ValueError(f"unknown release action {action!r}")
    return events_pb2.ModelRelease(
        version=version,
        uri=uri,
        created_at_ms=created_at_ms,
        action=action,
        previous_version=previous_version or "",
    )


def announce_release(
    producer: KafkaProducer, topic: str, release: events_pb2.ModelRelease
) -> None:
    """Produce the release (key ``release``) and wait for the broker's ack."""
    producer.send(topic, key=RELEASE_KEY, value=release.SerializeToString()).get(
        timeout=_SEND_TIMEOUT_S
    )


def announce(producer: KafkaProducer, settings: TrainingSettings,
             release: events_pb2.ModelRelease) -> events_pb2.Routing:
    """The release on ``models``, then the routing that makes it production; both acked."""
    announce_release(producer, settings.topic_models, release)
    current = read_routing(settings.kafka_bootstrap, settings.topic_routing, settings)
    if current is None:  # serving follows production.json: its production was the previous
        current = events_pb2.Routing(production=release.previous_version)
    routing = contract.promoted(current, release.version, release.uri, by="training",
                                at_ms=release.created_at_ms)
    routing.change = release.action
    producer.send(settings.topic_routing, key=contract.KEY,
                  value=routing.SerializeToString()).get(timeout=_SEND_TIMEOUT_S)
    return routing


def read_routing(bootstrap: str, topic: str, security: KafkaSecurity | None = None
                 ) -> events_pb2.Routing | None:
    """The routing record in force: the topic from its beginning to its end, folded.

    The loop is `contracts.catchup.read_to_end`'s, written for the synchronous
    kafka-python client training uses (serving reads the same topic with aiokafka)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="streamrec-training",
                             group_id=None, enable_auto_commit=False, **kafka_kwargs(security))
    try:
        partitions = [TopicPartition(topic, p) for p in range(contract.PARTITIONS)]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions)
        in_force: events_pb2.Routing | None = None
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for records in consumer.poll(timeout_ms=1000).values():
                in_force = contract.fold(in_force, ((r.key, r.value) for r in records))
        return in_force
    finally:
        consumer.close()


def publish_item_vectors(
    producer: KafkaProducer,
    topic: str,
    *,
    version: str,
    item_ids: Sequence[str],
    vectors: np.ndarray,
    updated_at_ms: int,
) -> int:
    """Produce one `ItemVector` per item (key item_id) and flush."""
    for item_id, vector in zip(item_ids, vectors, strict=True):
        message = events_pb2.ItemVector(
            item_id=item_id,
            model_version=version,
            vector=vector.tolist(),
            updated_at_ms=updated_at_ms,
        )
        producer.send(topic, key=item_id.encode("utf-8"), value=message.SerializeToString())
    producer.flush(timeout=_SEND_TIMEOUT_S)
    return len(item_ids)
