"""A batch's output records handed to a transactional producer as whole record batches,
one per output partition, rather than one ``send`` per record (which costs a future, a
lookup and an append each)."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from streams.records import Output

MAX_BATCH_BYTES = 1 << 20  # one record batch per output partition and batch of events

# ``send_batch`` takes an explicit partition, and the producer's own choice of one for a
# key (``AIOKafkaProducer._partition``) is not public; so the same public partitioner the
# producer uses by default (murmur2 of the key, as Kafka's Java client) is called here on
# the topic's partitions (``partitions_for``): a keyed record lands where ``send`` would
# have put it.
PARTITIONER = DefaultPartitioner()


async def send_batches(producer: AIOKafkaProducer, outputs: Sequence[Output]) -> None:
    """Add `outputs` to the producer's open transaction, one record batch per output
    partition; keyless records without a partition go through ``send``, which spreads
    them."""
    builders: dict[tuple[str, int], BatchBuilder] = {}
    partitions: dict[str, list[int]] = {}
    chosen: dict[tuple[str, bytes], int] = {}
    for topic, out_partition, key, value in outputs:
        if out_partition is None and key is None:
            await producer.send(topic, value)  # the producer spreads keyless records
            continue
        if out_partition is None:
            out_partition = chosen.get((topic, key))  # type: ignore[arg-type]
        if out_partition is None:
            numbers = partitions.get(topic)
            if numbers is None:
                numbers = partitions[topic] = sorted(await producer.partitions_for(topic))
            out_partition = chosen[topic, key] = PARTITIONER(key, numbers, numbers)  # type: ignore[index]
        builder = builders.get((topic, out_partition))
        if builder is None:
            builder = builders[topic, out_partition] = producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None) is None:  # full
            await producer.send_batch(builder, topic, partition=out_partition)
            builder = builders[topic, out_partition] = producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:
                # Larger than a batch on its own: the producer's checks apply.
                await producer.send(topic, value, key=key, partition=out_partition)
    for (topic, out_partition), builder in builders.items():
        await producer.send_batch(builder, topic, partition=out_partition)
