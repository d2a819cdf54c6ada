"""contracts.catchup.read_to_end against the real broker: plain topics, transactions
(committed, aborted, still open) read committed."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from kafka import KafkaProducer

from contracts.catchup import read_to_end

pytestmark = pytest.mark.integration


def _consumer(bootstrap: str, **options: object) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                            auto_offset_reset="earliest", fetch_max_wait_ms=50, **options)


async def _read(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
                ) -> tuple[list[ConsumerRecord], dict[TopicPartition, int]]:
    seen: list[ConsumerRecord] = []
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await read_to_end(consumer, partitions, seen.extend)
    finally:
        await consumer.stop()
    return seen, ends


async def test_every_partition_is_read_to_its_end_and_empty_ones_return_at_once(
    kafka_bootstrap: str, create_topics, unique: str,
) -> None:
    (topic,) = create_topics([f"catchup-{unique}"], partitions=3)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for n in range(7):
        producer.send(topic, key=b"k%d" % n, value=b"v%d" % n, partition=n % 2)
    producer.flush()
    producer.close()
    partitions = [TopicPartition(topic, p) for p in range(3)]
    seen, ends = await _read(_consumer(kafka_bootstrap), partitions)
    assert sorted(r.value for r in seen) == [b"v%d" % n for n in range(7)]
    assert ends == {partitions[0]: 4, partitions[1]: 3, partitions[2]: 0}
    for p in (0, 1):  # one partition's records in offset order
        offsets = [r.offset for r in seen if r.partition == p]
        assert offsets == sorted(offsets)


async def test_read_committed_stops_at_the_commit_marker_and_never_waits_for_an_open_one(
    kafka_bootstrap: str, create_topics, unique: str,
) -> None:
    (topic,) = create_topics([f"catchup-tx-{unique}"], partitions=1)
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap,
                                transactional_id=f"catchup-{unique}")
    await producer.start()
    try:
        async with producer.transaction():
            for n in range(3):
                await producer.send(topic, b"committed-%d" % n, key=b"k", partition=0)
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted", key=b"k", partition=0)
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"last", key=b"k", partition=0)
        await producer.begin_transaction()  # stays open while the reader runs
        await producer.send_and_wait(topic, b"open", key=b"k", partition=0)
        seen, ends = await _read(_consumer(kafka_bootstrap, isolation_level="read_committed"),
                                 [tp])
        await producer.abort_transaction()
    finally:
        await producer.stop()
    assert [r.value for r in seen] == [b"committed-0", b"committed-1", b"committed-2", b"last"]
    # 3 records + marker, aborted record + marker, 1 record + marker: the end (the last
    # stable offset, before the open transaction) is one past the last commit marker.
    assert ends == {tp: 8}
    assert seen[-1].offset == 6
