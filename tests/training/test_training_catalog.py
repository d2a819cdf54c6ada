"""training.eventlog.read_catalog against the real broker: binary and JSON items."""

from __future__ import annotations

import pytest
from kafka import KafkaConsumer, KafkaProducer

from protos import events_pb2
from training.eventlog import read_catalog

pytestmark = pytest.mark.integration


def test_the_catalog_takes_items_in_either_encoding(
    kafka_bootstrap: str, create_topics: object, unique: str,
) -> None:
    topic = create_topics([f"items-{unique}"], partitions=1,  # type: ignore[operator]
                          config={"cleanup.policy": "compact"})[0]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for key, value in [
            (b"a", events_pb2.Item(item_id="a", title="Binary").SerializeToString()),
            (b"b", b'{"itemId": "b", "title": "Json", "price": 3.5}'),
            (b"c", b'{"itemId": "c", "price": "cheap"}'),  # skipped as undecodable
        ]:
            producer.send(topic, key=key, value=value)
        producer.flush(30)
    finally:
        producer.close()
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None,
                             enable_auto_commit=False)
    try:
        catalog = read_catalog(consumer, topic, timeout_s=30, progress=False)
    finally:
        consumer.close()
    assert sorted(catalog) == ["a", "b"]
    assert (catalog["b"].title, catalog["b"].price) == ("Json", 3.5)
