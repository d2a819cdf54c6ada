"""streams.events.userstore and Transactions.send_many against the real Kafka: user states
restored from what the transactions committed, never from what they aborted."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.events.transactions import Transactions
from streams.events.userstore import UserStore
from streams.history import Interaction, UserState

pytestmark = [pytest.mark.integration]


def state(*items: str) -> UserState:
    return UserState(
        history=tuple(Interaction(item, 1, 1000 + n, 1.0) for n, item in enumerate(items)),
        accepted=tuple((f"e-{item}", n) for n, item in enumerate(items)),
    )


def test_states_are_kept_per_partition_and_dropped_with_it() -> None:
    store = UserStore(topic="unused", bootstrap_servers=[])
    store.put(0, "u1", state("a"))
    store.put(1, "u2", state("b", "c"))
    assert store.get(0, "u1") == state("a")
    assert store.get(1, "u2") == state("b", "c")
    assert store.get(1, "u1") == UserState()  # another partition's user is not there
    assert sorted(store.users()) == [(0, "u1"), (1, "u2")]
    store.drop([1])
    assert len(store) == 1 and store.get(1, "u2") == UserState()


async def test_restore_reads_committed_states_and_skips_aborted_ones(
    kafka_bootstrap: str, unique: str, create_topics: Callable[..., list[str]]
) -> None:
    (changelog,) = create_topics([f"users-{unique}"], partitions=2,
                                 config={"cleanup.policy": "compact"})
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique)
    await producer.start()
    writer = UserStore(topic=changelog, bootstrap_servers=[kafka_bootstrap])
    try:
        async with producer.transaction():
            for partition, user, items in [(0, "u1", ("a",)), (0, "u1", ("a", "b")),
                                           (1, "u2", ("c",)), (0, "u3", ("d",))]:
                value = writer.put(partition, user, state(*items))
                await producer.send(changelog, value, key=user.encode(), partition=partition)
            await producer.send(changelog, None, key=b"u3", partition=0)  # deleted
        await producer.begin_transaction()
        await producer.send(changelog, writer.put(0, "u1", state("x")), key=b"u1", partition=0)
        await producer.abort_transaction()
    finally:
        await producer.stop()

    store = UserStore(topic=changelog, bootstrap_servers=[kafka_bootstrap])
    await store.restore([0])
    assert sorted(store.users()) == [(0, "u1")]
    assert store.get(0, "u1") == state("a", "b")
    await store.restore([1])
    assert store.get(1, "u2") == state("c")
    assert len(store) == 2


async def test_send_many_commits_batches_with_the_offset(
    kafka_bootstrap: str, unique: str, create_topics: Callable[..., list[str]]
) -> None:
    source, out = create_topics([f"src-{unique}", f"out-{unique}"], partitions=3)
    transactions = Transactions(
        bootstrap_servers=[kafka_bootstrap], group_id=f"g-{unique}",
        transactional_prefix=unique, topic=source, commit_interval_s=0.1,
        transaction_timeout_ms=10_000, owns=lambda partition: True,
    )
    await transactions.start()
    try:
        keys = [f"user-{n}".encode() for n in range(30)]
        async with transactions.lock:
            await transactions.send_many(
                2, [(out, None, key, b"v-" + key) for key in keys]
                + [(out, 0, b"pinned", b"to partition 0"), (out, None, None, b"keyless")],
            )
            transactions.processed(2, 41)
            await transactions.commit()
    finally:
        await transactions.stop()

    reader = AIOKafkaConsumer(out, bootstrap_servers=kafka_bootstrap, group_id=None,
                              isolation_level="read_committed", auto_offset_reset="earliest")
    await reader.start()
    try:
        got: list[tuple[int, bytes | None, bytes]] = []
        while len(got) < 32:
            for tp, records in (await reader.getmany(timeout_ms=2000)).items():
                got += [(tp.partition, r.key, r.value) for r in records]
        committed = await _committed(kafka_bootstrap, f"g-{unique}", TopicPartition(source, 2))
    finally:
        await reader.stop()
    # Keyed records land where the producer's own partitioner would put them.
    probe = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await probe.start()
    try:
        partitions = sorted(await probe.partitions_for(out))
        expected = {key: probe._partitioner(key, partitions, partitions) for key in keys}
    finally:
        await probe.stop()
    assert {key: p for p, key, _ in got if key and key.startswith(b"user-")} == expected
    assert (0, b"pinned", b"to partition 0") in got
    assert sum(1 for _, key, value in got if key is None and value == b"keyless") == 1
    assert committed == 42


async def _committed(kafka_bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(tp)
    finally:
        await consumer.stop()
