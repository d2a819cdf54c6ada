"""A worker whose events group has no offsets yet starts where the group of earlier
versions (Faust's, ``app_id``) left off: an upgrade neither reads the log again nor
skips any of it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from streams_harness import StreamsWorker, TopicLog

from bench.stack import delete_keys, delete_topics
from protos import events_pb2

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def worker(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> Iterator[StreamsWorker]:
    suffix = "t" + uuid.uuid4().hex[:10]
    worker = StreamsWorker(kafka=kafka_bootstrap, redis_url=redis_url, suffix=suffix,
                           workdir=tmp_path)
    try:
        yield worker
    finally:
        worker.stop()
        client = redis.Redis.from_url(redis_url)
        delete_keys(client, worker.redis_prefix)
        client.close()
        delete_topics(kafka_bootstrap, suffix)


async def produce_and_commit_in_legacy_group(kafka: str, topic: str, group: str) -> None:
    """Five undecodable records on partition 0; the legacy group committed offset 3."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await producer.start()
    try:
        for n in range(5):
            await producer.send_and_wait(topic, f"old-{n}".encode(), key=b"u", partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.commit({tp: 3})
    finally:
        await consumer.stop()


def test_an_upgraded_worker_starts_at_the_offsets_of_the_legacy_group(
    worker: StreamsWorker, kafka_bootstrap: str, create_topics
) -> None:
    events = worker.topics["events"]
    create_topics([events], partitions=4)
    app_id = worker.env["STREAMREC_STREAMS_APP_ID"]
    asyncio.run(produce_and_commit_in_legacy_group(kafka_bootstrap, events, app_id))
    worker.start()
    dlq = TopicLog(kafka_bootstrap, worker.topics["dlq"])
    try:
        letters = dlq.wait_for(lambda records: records if len(records) >= 2 else None, worker,
                               what="dead letters of the records after the legacy offset")
        origins = sorted(
            (letter.origin_partition, letter.origin_offset)
            for letter in (events_pb2.DeadLetter.FromString(r.value) for r in letters)
        )
        assert origins == [(0, 3), (0, 4)]  # offsets 0-2 were handled by the old version
        worker.check_alive()
    finally:
        dlq.close()
