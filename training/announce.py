"""Tell the other deployables about a release: `ModelRelease` on ``models``, and
optionally the version's item vectors on ``item-vectors``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
from kafka import KafkaProducer

from contracts.topics import ITEM_VECTORS, MODELS, TopicSpec, ensure_topics, spec
from protos import events_pb2
from training.settings import TrainingSettings

RELEASE_KEY = b"release"
_SEND_TIMEOUT_S = 30.0


def written_topics(settings: TrainingSettings) -> list[TopicSpec]:
    """The topics a run writes: ``models`` and, when it publishes them, ``item-vectors``."""
    return [spec(MODELS, settings.topic_models, settings),
            *([spec(ITEM_VECTORS, settings.topic_item_vectors, settings)]
              if settings.publish_item_vectors else [])]


def prepare_topics(settings: TrainingSettings) -> None:
    """Create the topics a run writes, with their contract settings, before it starts:
    the broker never auto-creates them, and a run should not fail only at its end."""
    asyncio.run(ensure_topics(settings.kafka_bootstrap, written_topics(settings),
                              client_id="streamrec-training-setup"))


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
