"""Click-through and conversion per model version, read from Kafka as
``python -m serving.cli.report`` reads them (``contracts.experiments``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from google.protobuf.message import DecodeError, Message
from kafka import KafkaConsumer

from console.settings import ConsoleSettings
from contracts.deadletters import read_to_end
from contracts.experiments import VersionReport, compute
from contracts.security import kafka_kwargs
from protos import events_pb2

M = TypeVar("M", bound=Message)


def _messages(settings: ConsoleSettings, topic: str, parse: Callable[[bytes], M]) -> list[M]:
    """Every committed record of `topic` that decodes (none when the topic is missing)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                             enable_auto_commit=False, isolation_level="read_committed",
                             client_id="streamrec-console", **kafka_kwargs(settings))
    messages: list[M] = []
    try:
        for record in read_to_end(consumer, topic, from_committed=False):
            try:
                messages.append(parse(record.value or b""))
            except DecodeError:
                continue
    except LookupError:
        return []
    finally:
        consumer.close()
    return messages


def report(settings: ConsoleSettings) -> tuple[dict[str, VersionReport], int]:
    """Reports by version and the number of unattributed click/purchase events."""
    served = _messages(settings, settings.topic_recommendations,
                       events_pb2.RecommendationLog.FromString)
    enriched: Iterable[events_pb2.EnrichedEvent] = _messages(
        settings, settings.topic_enriched, events_pb2.EnrichedEvent.FromString)
    return compute(served, (entry.event for entry in enriched))
