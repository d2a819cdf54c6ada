"""Deleted users are left out of the next training run's data set, against the real broker:
the trainer's read of the event log and ``evaluate --kafka``'s both lack a deleted user's
events from before the deletion and keep those after it (the user came back as new)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer

from protos import events_pb2
from training.__main__ import _dataset_from_kafka
from training.job import read_log_and_catalog
from training.settings import TrainingSettings

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000
DELETED_AT = T0 + 10_000
# (user, item, event time): ann is deleted at DELETED_AT and comes back after it.
EVENTS = [("ann", "toy", T0), ("bob", "heat", T0 + 1000), ("ann", "heat", T0 + 2000),
          ("ann", "ronin", DELETED_AT + 1000), ("bob", "toy", DELETED_AT + 2000)]


def _settings(unique: str, kafka_bootstrap: str, create_topics: Callable[..., list[str]],
              ) -> TrainingSettings:
    create_topics([f"events.enriched-{unique}"])
    create_topics([f"items-{unique}", f"deletions-{unique}"], config={"cleanup.policy": "compact"})
    return TrainingSettings(kafka_bootstrap=kafka_bootstrap, topic_enriched=f"events.enriched-{unique}",
                            topic_items=f"items-{unique}", topic_deletions=f"deletions-{unique}",
                            read_timeout_s=20)


def _produce(producer: KafkaProducer, settings: TrainingSettings) -> None:
    for n, (user, item_id, timestamp_ms) in enumerate(EVENTS):
        enriched = events_pb2.EnrichedEvent(
            event=events_pb2.Event(event_id=f"e{n}", user_id=user, item_id=item_id,
                                   type=events_pb2.VIEW, timestamp_ms=timestamp_ms),
            item=events_pb2.Item(item_id=item_id, title=item_id.title()), weight=1.0)
        producer.send(settings.topic_enriched, key=user.encode(), value=enriched.SerializeToString())
    deletion = events_pb2.UserDeletion(user_id="ann", requested_at_ms=DELETED_AT, requested_by="t")
    producer.send(settings.topic_deletions, key=b"ann", value=deletion.SerializeToString())
    producer.flush()


def _pairs(user_ids: Any, item_ids: Any) -> set[tuple[str, str]]:
    return set(zip(list(user_ids), list(item_ids), strict=True))


KEPT = {("bob", "heat"), ("ann", "ronin"), ("bob", "toy")}


def test_the_trainers_event_log_lacks_a_deleted_users_earlier_events(
    unique: str, kafka_bootstrap: str, create_topics: Callable[..., list[str]],
    producer: KafkaProducer, consumer: KafkaConsumer,
) -> None:
    settings = _settings(unique, kafka_bootstrap, create_topics)
    _produce(producer, settings)
    events, _ = read_log_and_catalog(settings, consumer, progress=False)
    assert _pairs(events.user_ids, events.item_ids) == KEPT
    assert events.deleted == 2


def test_evaluate_kafka_reads_the_same_data_set(
    unique: str, kafka_bootstrap: str, create_topics: Callable[..., list[str]],
    producer: KafkaProducer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(unique, kafka_bootstrap, create_topics)
    _produce(producer, settings)
    for name in ("kafka_bootstrap", "topic_enriched", "topic_items", "topic_deletions"):
        monkeypatch.setenv(f"STREAMREC_TRAINING_{name.upper()}", str(getattr(settings, name)))
    dataset = _dataset_from_kafka(None)
    assert _pairs(dataset.events.user_ids, dataset.events.item_ids) == KEPT
