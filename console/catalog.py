"""An item's catalog entry, read from the compacted ``items`` topic (key: item id; the
newest record of a key is the item, an empty value a deletion)."""

from __future__ import annotations

from google.protobuf.message import DecodeError
from kafka import KafkaConsumer

from console.settings import ConsoleSettings
from contracts.deadletters import read_to_end
from contracts.security import kafka_kwargs
from protos import events_pb2


def catalog_entry(settings: ConsoleSettings, item_id: str) -> events_pb2.Item | None:
    """The item's newest catalog record, or None when it has none (or was deleted)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                             enable_auto_commit=False, client_id="streamrec-console",
                             **kafka_kwargs(settings))
    key = item_id.encode()
    newest: bytes | None = None
    try:
        for record in read_to_end(consumer, settings.topic_items, from_committed=False):
            if record.key == key:
                newest = record.value
    except LookupError:
        return None
    finally:
        consumer.close()
    if not newest:
        return None
    try:
        return events_pb2.Item.FromString(newest)
    except DecodeError:
        return None
