"""Reading partitions to the end offsets they have now, with aiokafka.

Every reader that rebuilds state from a topic does this before it serves or follows:
the catalog feeds (serving, streams), the routing record in force, the changelog restore.
The caller makes, assigns and positions the consumer (beginning, or any offset);
:func:`read_to_end` snapshots the end offsets, hands every fetched batch over and returns
once each partition's position has reached its snapshot.

With ``isolation_level="read_committed"`` the end offsets are the last stable offsets, so
an open transaction's records are never waited for. A transaction ends in a commit (or
abort) marker that takes an offset of its own but is never handed out: the end offset is
one past that marker, while the last record is before it. Positions are therefore
compared with the end offsets (the consumer moves its position past control batches),
never the offset of the last record seen, which can stay short of the end for good.

training reads its topics with the synchronous kafka-python client (``KafkaConsumer``),
a different API; its loops do the same thing there and are not shared with this one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from contracts.security import KafkaSecurity, kafka_kwargs

POLL_MS = 500

Handler = Callable[[list[ConsumerRecord]], None]


async def read_to_end(consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition],
                      handle: Handler, *, poll_ms: int = POLL_MS) -> dict[TopicPartition, int]:
    """Hand `handle` every batch of `partitions` from their positions now to the end
    offsets seen at the call, one partition's records at a time in offset order; returns
    those end offsets. A batch may reach past them (records newer than the snapshot)."""
    ends: dict[TopicPartition, int] = await consumer.end_offsets(list(partitions))
    pending = [tp for tp in partitions if await consumer.position(tp) < ends[tp]]
    while pending:
        batches = await consumer.getmany(*pending, timeout_ms=poll_ms)
        for records in batches.values():
            handle(records)
        pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
    return ends


async def topic_partitions(
    bootstrap_servers: str | list[str], client_id: str, topic: str,
    security: KafkaSecurity | None = None,
) -> list[TopicPartition]:
    """The partitions of `topic`, none if it does not exist; the topic is never auto-created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id=client_id,
                                **kafka_kwargs(security))
    await admin.start()
    try:
        # No topic names: asks for all topics, so the broker auto-creates nothing.
        described = await admin.describe_topics()
    finally:
        await admin.close()
    numbers = sorted(
        partition["partition"]
        for entry in described if entry["topic"] == topic
        for partition in entry["partitions"]
    )
    return [TopicPartition(topic, number) for number in numbers]
