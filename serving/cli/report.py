"""Per model version click-through and conversion, from the Kafka logs.

``recommendations`` says which version served which recommendation id; clicks and
purchases on ``events.enriched`` carry that id (``Event.recommendation_id``). The join:

- served: recommendations logged for the version;
- click-through: share of served recommendations with at least one CLICK;
- conversion: share of served recommendations with at least one PURCHASE.

Events whose id no served recommendation has are counted as unattributed. Deleted users'
recommendations and events from before their deletion are left out (``contracts.deletions``).

    python -m serving.cli.report [--json]      # topics and Kafka from STREAMREC_SERVING_*
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from google.protobuf.message import DecodeError, Message

from contracts.catchup import read_to_end, topic_partitions
from contracts.console import add_verbose_flag, setup_logging
from contracts.deletions import Deletions, read_deletions
from contracts.security import kafka_kwargs
from protos import events_pb2
from serving.settings import ServingSettings


@dataclass
class VersionReport:
    """What one model version served and what users did with it."""

    version: str
    served: int = 0
    items_shown: int = 0
    clicked: int = 0  # recommendations with at least one click
    converted: int = 0  # recommendations with at least one purchase
    clicks: int = 0
    purchases: int = 0

    @property
    def click_through(self) -> float:
        return self.clicked / self.served if self.served else 0.0

    @property
    def conversion(self) -> float:
        return self.converted / self.served if self.served else 0.0


def compute(
    served: Iterable[events_pb2.RecommendationLog], events: Iterable[events_pb2.Event]
) -> tuple[dict[str, VersionReport], int]:
    """Reports by version and the number of unattributed click/purchase events."""
    reports: dict[str, VersionReport] = {}
    version_of: dict[str, str] = {}
    for entry in served:
        report = reports.setdefault(entry.model_version, VersionReport(entry.model_version))
        if entry.recommendation_id not in version_of:
            report.served += 1
            report.items_shown += len(entry.item_ids)
            version_of[entry.recommendation_id] = entry.model_version
    clicked: set[str] = set()
    converted: set[str] = set()
    unattributed = 0
    for event in events:
        if event.type not in (events_pb2.CLICK, events_pb2.PURCHASE) or not event.recommendation_id:
            continue
        version = version_of.get(event.recommendation_id)
        if version is None:
            unattributed += 1
            continue
        report = reports[version]
        if event.type == events_pb2.CLICK:
            report.clicks += 1
            clicked.add(event.recommendation_id)
        else:
            report.purchases += 1
            converted.add(event.recommendation_id)
    for recommendation_id in clicked:
        reports[version_of[recommendation_id]].clicked += 1
    for recommendation_id in converted:
        reports[version_of[recommendation_id]].converted += 1
    return reports, unattributed


async def read_topic(settings: ServingSettings, topic: str) -> list[bytes]:
    """Every value on `topic` up to the end offsets seen now (no consumer group)."""
    client_id = f"{settings.client_id}-report"
    partitions = await topic_partitions(settings.bootstrap_servers(), client_id, topic, settings)
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers(), group_id=None,
                                enable_auto_commit=False, client_id=client_id,
                                auto_offset_reset="earliest",
                                isolation_level="read_committed",  # streams writes in transactions
                                **kafka_kwargs(settings))
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await read_to_end(consumer, partitions, records.extend)
    finally:
        await consumer.stop()
    return [r.value for r in records
            if r.value is not None and r.offset < ends[TopicPartition(r.topic, r.partition)]]


M = TypeVar("M", bound=Message)


def _decoded(values: list[bytes], parse: Callable[[bytes], M]) -> list[M]:
    """The values that decode; others (not this message) are skipped."""
    messages: list[M] = []
    for value in values:
        try:
            messages.append(parse(value))
        except DecodeError:
            continue
    return messages


def kept(served: Iterable[events_pb2.RecommendationLog], events: Iterable[events_pb2.Event],
         deletions: Deletions) -> tuple[list[events_pb2.RecommendationLog], list[events_pb2.Event]]:
    """What the report counts: neither recommendations served to, nor events of, a deleted
    user before their deletion."""
    return ([entry for entry in served if not deletions.removes(entry.user_id, entry.served_at_ms)],
            [event for event in events if not deletions.removes(event.user_id, event.timestamp_ms)])


async def build(settings: ServingSettings) -> tuple[dict[str, VersionReport], int]:
    served = _decoded(await read_topic(settings, settings.topic_recommendations),
                      events_pb2.RecommendationLog.FromString)
    enriched = _decoded(await read_topic(settings, settings.topic_enriched),
                        events_pb2.EnrichedEvent.FromString)
    deletions = await read_deletions(settings.bootstrap_servers(), settings.topic_deletions,
                                     client_id=f"{settings.client_id}-report", security=settings)
    return compute(*kept(served, (entry.event for entry in enriched), deletions))


def as_json(reports: dict[str, VersionReport], unattributed: int) -> dict[str, object]:
    return {
        "versions": {
            version: asdict(r) | {"click_through": r.click_through, "conversion": r.conversion}
            for version, r in sorted(reports.items())
        },
        "unattributed_events": unattributed,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.cli.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    setup_logging(verbose=args.verbose)
    reports, unattributed = asyncio.run(build(ServingSettings()))
    if args.json:
        print(json.dumps(as_json(reports, unattributed), indent=2))
        return 0
    print(f"{'version':<24} {'served':>8} {'clicked':>8} {'CTR':>7} {'converted':>9} {'conv.':>7}")
    for version, r in sorted(reports.items()):
        print(f"{version:<24} {r.served:>8} {r.clicked:>8} {r.click_through:>7.2%} "
              f"{r.converted:>9} {r.conversion:>7.2%}")
    print(f"unattributed click/purchase events: {unattributed}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
