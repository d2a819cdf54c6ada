"""TrackRelations end to end: real server on port 0, real Kafka; the edge's key and value
on the compacted relations topic, tombstones for removals, refusals with BadRequest."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from conftest import Stack
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from contracts.topics import DEFAULT_PARTITIONS
from protos import events_pb2, recommender_pb2

pytestmark = pytest.mark.integration


def _relation(follower: str, followee: str, **fields: Any) -> events_pb2.Relation:
    return events_pb2.Relation(follower_id=follower, followee_id=followee,
                               kind=fields.pop("kind", events_pb2.FOLLOW),
                               timestamp_ms=int(time.time() * 1000), **fields)


async def _records(stack: Stack, topic: str) -> list[tuple[str, bytes | None]]:
    """Every ``(key, value)`` of `topic` up to its end offsets now, partition by partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        # The server created the topic with its default layout.
        partitions = [TopicPartition(topic, p) for p in range(DEFAULT_PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        received: list[tuple[str, bytes | None]] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                received += [(r.key.decode(), r.value) for r in records]
    finally:
        await consumer.stop()
    return received


async def test_relations_are_on_the_compacted_topic_keyed_by_edge_and_removals_are_tombstones(
    stack: Stack, describe_topics: Any
) -> None:
    made = [_relation("alice", "bob", share_name=True),
            _relation("a|b", "carol", kind=events_pb2.FRIEND)]
    removed = _relation("alice", "bob", removed=True)
    async with stack.server() as client:
        first = await client.stub.TrackRelations(recommender_pb2.TrackRelationsRequest(relations=made))
        second = await client.stub.TrackRelations(
            recommender_pb2.TrackRelationsRequest(relations=[removed]))
    assert (first.accepted, second.accepted) == (2, 1)
    ((partitions, configs),) = describe_topics([stack.topics["relations"]]).values()
    assert (partitions, configs["cleanup.policy"]) == (DEFAULT_PARTITIONS, "compact")

    records = await _records(stack, stack.topics["relations"])
    by_key: dict[str, list[bytes | None]] = {}
    for key, value in records:
        by_key.setdefault(key, []).append(value)
    assert set(by_key) == {"alice|bob|follow", "a%7Cb|carol|friend"}
    made_value, tombstone = by_key["alice|bob|follow"]
    assert made_value is not None and events_pb2.Relation.FromString(made_value) == made[0]
    assert tombstone is None  # the newest state of the edge: removed
    (friend,) = by_key["a%7Cb|carol|friend"]
    assert friend is not None and events_pb2.Relation.FromString(friend) == made[1]


async def test_a_call_with_a_bad_relation_is_refused_whole_with_field_violations(
    stack: Stack
) -> None:
    bad = [
        _relation("alice", "bob"),
        _relation("carol", "carol"),
        _relation("", "dave", kind=events_pb2.RELATION_KIND_UNSPECIFIED),
        _relation("x" * 65, "erin"),
    ]
    async with stack.server(max_id_chars=64, max_track_relations=4) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.stub.TrackRelations(recommender_pb2.TrackRelationsRequest(relations=bad))
        with pytest.raises(grpc.aio.AioRpcError) as too_many:
            await client.stub.TrackRelations(
                recommender_pb2.TrackRelationsRequest(relations=[bad[0]] * 5))
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await client.stub.TrackRelations(recommender_pb2.TrackRelationsRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(
        "3 of 4 relations are invalid, none was written: relations[1].followee_id: ")
    status = rpc_status.from_call(caught.value)
    assert status is not None
    (detail,) = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    assert [(v.field, v.reason) for v in bad_request.field_violations] == [
        ("relations[1].followee_id", "SELF_RELATION"),
        ("relations[2].follower_id", "MISSING_FIELD"),
        ("relations[2].kind", "UNKNOWN_RELATION_KIND"),
        ("relations[3].follower_id", "TOO_LONG"),
    ]
    assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "relations has 5 entries; at most 4" in too_many.value.details()
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await _records(stack, stack.topics["relations"]) == []  # nothing of the bad calls
