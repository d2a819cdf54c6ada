"""Fixtures of the ingest tests: reading a topic back to its end offsets."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

ReadTopic = Callable[[str], list[ConsumerRecord]]


@pytest.fixture
def read_topic(kafka_bootstrap: str) -> ReadTopic:
    """Every record of a topic up to its current end offsets, partition by partition."""

    def read(topic: str) -> list[ConsumerRecord]:
        consumer = KafkaConsumer(
            bootstrap_servers=kafka_bootstrap, group_id=None, enable_auto_commit=False
        )
        try:
            found = consumer.partitions_for_topic(topic) or set()
            partitions = [TopicPartition(topic, p) for p in sorted(found)]
            if not partitions:
                return []
            ends = consumer.end_offsets(partitions)
            consumer.assign(partitions)
            consumer.seek_to_beginning()
            records: list[ConsumerRecord] = []
            while any(consumer.position(tp) < ends[tp] for tp in partitions):
                for batch in consumer.poll(timeout_ms=1000).values():
                    records.extend(r for r in batch if r.offset < ends[TopicPartition(topic, r.partition)])
            return sorted(records, key=lambda r: (r.partition, r.offset))
        finally:
            consumer.close()

    return read
