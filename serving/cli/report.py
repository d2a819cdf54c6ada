"""Per model version click-through and conversion, from the Kafka logs.

``recommendations`` says which version served which recommendation id; clicks and
purchases on ``events.enriched`` carry that id (``Event.recommendation_id``). The join:

- served: recommendations logged for the version;
- click-through: share of served recommendations with at least one CLICK;
- conversion: share of served recommendations with at least one PURCHASE.

Events whose id no served recommendation has are counted as unattributed. The join is
``contracts.experiments.compute`` (the operator console draws the same figures). Deleted
users' recommendations and events from before their deletion are left out
(``contracts.deletions``).

    python -m serving.cli.report [--json]      # topics and Kafka from STREAMREC_SERVING_*
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from google.protobuf.message import DecodeError, Message

from contracts.catchup import read_to_end, topic_partitions
from contracts.console import add_verbose_flag, setup_logging
from contracts.deletions import Deletions, read_deletions
from contracts.experiments import VersionReport, compute
from contracts.security import kafka_kwargs
from protos import events_pb2
from serving.settings import ServingSettings


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
