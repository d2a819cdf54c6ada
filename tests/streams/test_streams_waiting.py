"""Users whose events came before their items' vectors, against the real worker: they are
embedded once the vectors exist, without another event, also after a restart and when
the vectors came while the worker was down.

The items here are embedded by another worker of the group: their records on ``items``
lie behind the group's committed offsets, so this worker's items agent never takes
them, while its catalog reader has them (events naming them are accepted). Their vectors
come later on ``item-vectors``, as that worker (or the trainer) publishes them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata
from streams_harness import Running

from contracts.encoder import ItemEncoder
from contracts.itemtext import item_text
from protos import events_pb2

pytestmark = pytest.mark.integration

VERSION = "base"  # the worker's version without an artifact store


def skip_items_in_group(running: Running, bootstrap: str) -> None:
    """Commit the Faust group's offsets of ``items`` at the topic's end."""
    topic = running.worker.topics["items"]
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             group_id=running.worker.env["STREAMREC_STREAMS_APP_ID"])
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        consumer.commit({tp: OffsetAndMetadata(ends[tp], "", -1) for tp in tps})
    finally:
        consumer.close()


def start_and_wait_for_partitions(running: Running) -> None:
    running.worker.start()
    deadline = time.monotonic() + 60
    while "events partitions" not in running.worker.log_since_start():
        running.worker.check_alive()
        assert time.monotonic() < deadline, running.worker.log_tail()
        time.sleep(0.2)


@pytest.fixture(scope="module")
def late_items(running: Running, kafka_bootstrap: str) -> Iterator[list[events_pb2.Item]]:
    """Catalog items without a vector: published while the worker is down, skipped by
    its items agent. The worker now holds one waiting user at most."""
    items = [events_pb2.Item(item_id=f"late-{n}", title=f"Late item {n}", categories=["late"])
             for n in range(4)]
    assert running.worker.stop() == 0
    running.worker.env["STREAMREC_STREAMS_WAITING_USERS_MAX"] = "1"
    for item in items:
        running.send("items", item.item_id, item.SerializeToString())
    skip_items_in_group(running, kafka_bootstrap)
    start_and_wait_for_partitions(running)
    yield items


def user_vector(running: Running, user_id: str) -> dict[bytes, bytes]:
    key = running.worker.keys.user_vector(user_id)
    return running.redis.hgetall(key)  # type: ignore[return-value]


def track(running: Running, user_id: str, item_id: str, count: int = 2) -> None:
    """Send `count` events of the user on the item; wait until they are enriched."""
    now = time.time_ns() // 1_000_000
    sent = running.send_all("events", [
        (user_id.encode(), events_pb2.Event(
            event_id=f"{user_id}-{n}", user_id=user_id, item_id=item_id, type=events_pb2.VIEW,
            timestamp_ms=now - 1000 + n).SerializeToString())
        for n in range(count)
    ])

    def enriched(_: list[ConsumerRecord]) -> bool | None:
        found = running.outcomes(set(sent))
        return True if len(found) == len(sent) else None

    running.logs["enriched"].wait_for(enriched, running.worker, what="the user's events")
    assert all(kinds == ["accepted"] for kinds in running.outcomes(set(sent)).values())
    assert running.redis.exists(running.worker.keys.seen(user_id))
    assert not user_vector(running, user_id), "the item had a vector already"


def publish_vector(running: Running, encoder: ItemEncoder, item: events_pb2.Item) -> None:
    vector = encoder.encode([item_text(item)])[0]
    running.send("item_vectors", item.item_id, events_pb2.ItemVector(
        item_id=item.item_id, model_version=VERSION, vector=vector.tolist(),
        updated_at_ms=time.time_ns() // 1_000_000).SerializeToString())


def wait_for_vector(running: Running, user_id: str, timeout_s: float = 30.0) -> dict[bytes, bytes]:
    deadline = time.monotonic() + timeout_s
    while not (found := user_vector(running, user_id)):
        running.worker.check_alive()
        assert time.monotonic() < deadline, (
            f"no vector of {user_id} {timeout_s} s after the item's\n{running.worker.log_tail()}")
        time.sleep(0.1)
    return found


def test_a_user_is_embedded_once_the_vectors_of_their_items_arrive(
    running: Running, late_items: list[events_pb2.Item], encoder: ItemEncoder,
) -> None:
    user_id = f"early-{time.time_ns()}"
    track(running, user_id, late_items[0].item_id)
    publish_vector(running, encoder, late_items[0])
    found = wait_for_vector(running, user_id)
    assert found[b"version"] == VERSION.encode()
    assert len(found[b"vec"]) == 4 * encoder.dim


@pytest.mark.parametrize(("item", "while_down"), [(1, False), (3, True)],
                         ids=["vectors-after-the-restart", "vectors-while-down"])
def test_waiting_users_are_found_again_after_a_restart(
    running: Running, late_items: list[events_pb2.Item], encoder: ItemEncoder,
    item: int, while_down: bool,
) -> None:
    """The user's state is restored from its changelog: waiting for the item's vector,
    or, when it came while the worker was down, waiting for nothing but without one."""
    user_id = f"restarted-{time.time_ns()}"
    track(running, user_id, late_items[item].item_id)
    assert running.worker.stop() == 0
    if while_down:
        publish_vector(running, encoder, late_items[item])
    start_and_wait_for_partitions(running)
    if not while_down:
        publish_vector(running, encoder, late_items[item])
    assert wait_for_vector(running, user_id)[b"version"] == VERSION.encode()


def test_past_the_bound_every_user_is_embedded_again(
    running: Running, late_items: list[events_pb2.Item], encoder: ItemEncoder,
) -> None:
    users = [f"many-{n}-{time.time_ns()}" for n in range(3)]
    for user_id in users:  # one held, the others past the bound
        track(running, user_id, late_items[2].item_id)
    publish_vector(running, encoder, late_items[2])
    for user_id in users:
        assert wait_for_vector(running, user_id)[b"version"] == VERSION.encode()
    assert "wait for item vectors: re-embedding all" in running.worker.log_since_start()
