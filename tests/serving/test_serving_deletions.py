"""DeleteUser end to end: real server on port 0, real Kafka. The deletion on the compacted
``deletions`` topic and its control record on ``events`` (the user's key, the control
header), committed together; bad ids refused with BadRequest details; asking twice; the
admin CLI; TrackEvents records never carry the control header."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from conftest import Stack
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from contracts.catchup import topic_partitions
from contracts.deletions import CONTROL_HEADER, USER_DELETION, is_control
from protos import events_pb2, recommender_pb2, recommender_pb2_grpc

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def _committed(stack: Stack, topic: str) -> list[ConsumerRecord]:
    """Every committed record of `topic` up to its end offsets now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka, group_id=None,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = await topic_partitions([stack.kafka], "deletions-test", topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[ConsumerRecord] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records += batch
    finally:
        await consumer.stop()
    return records


def _violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)
    assert status is not None
    (detail,) = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    return [(v.field, v.reason) for v in bad_request.field_violations]


async def test_delete_user_refuses_an_empty_or_too_long_id_with_field_violations(
    stack: Stack
) -> None:
    async with stack.server(max_id_chars=8) as client:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{client.running.admin_port}") as channel:
            admin = recommender_pb2_grpc.AdminStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as empty:
                await admin.DeleteUser(recommender_pb2.DeleteUserRequest(user_id=""))
            with pytest.raises(grpc.aio.AioRpcError) as long:
                await admin.DeleteUser(recommender_pb2.DeleteUserRequest(user_id="x" * 9))
    assert empty.value.code() == long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(empty.value) == [("user_id", "MISSING_FIELD")]
    assert _violations(long.value) == [("user_id", "TOO_LONG")]
    assert "longer than 8 characters" in (long.value.details() or "")
    assert await _committed(stack, stack.topics["deletions"]) == []
    assert not [r for r in await _committed(stack, stack.topics["events"]) if is_control(r.headers)]


async def test_a_deletion_and_its_control_record_are_committed_together_keyed_by_the_user(
    stack: Stack, describe_topics: Any
) -> None:
    before = int(time.time() * 1000)
    event = events_pb2.Event(event_id="e1", user_id="ada", item_id="i1", type=events_pb2.CLICK,
                             timestamp_ms=before)
    async with stack.server() as client:
        await client.stub.TrackEvents(recommender_pb2.TrackEventsRequest(events=[event]))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{client.running.admin_port}") as channel:
            admin = recommender_pb2_grpc.AdminStub(channel)
            first = await admin.DeleteUser(recommender_pb2.DeleteUserRequest(user_id="ada"))
            second = await admin.DeleteUser(recommender_pb2.DeleteUserRequest(user_id="ada"))
    assert first.user_id == second.user_id == "ada"
    assert before <= first.requested_at_ms <= second.requested_at_ms
    ((_, configs),) = describe_topics([stack.topics["deletions"]]).values()
    assert configs["cleanup.policy"] == "compact"

    deletions = await _committed(stack, stack.topics["deletions"])
    assert [(r.key, events_pb2.UserDeletion.FromString(r.value).requested_at_ms)
            for r in deletions] == [(b"ada", first.requested_at_ms), (b"ada", second.requested_at_ms)]
    assert events_pb2.UserDeletion.FromString(deletions[0].value).requested_by.startswith("serving")
    on_events = await _committed(stack, stack.topics["events"])
    tracked = [r for r in on_events if not is_control(r.headers)]
    controls = [r for r in on_events if is_control(r.headers)]
    assert [events_pb2.Event.FromString(r.value) for r in tracked] == [event]
    assert all(not r.headers for r in tracked)  # a frontend cannot make a control record
    assert [(r.key, r.headers) for r in controls] == [(b"ada", ((CONTROL_HEADER, USER_DELETION),))] * 2
    assert [r.value for r in controls] == [r.value for r in deletions]
    # The user's partition: the control records follow the user's tracked event.
    assert {r.partition for r in controls} == {tracked[0].partition}
    assert all(r.offset > tracked[0].offset for r in controls)


async def test_admin_cli_deletes_a_user(stack: Stack) -> None:
    async with stack.server() as client:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "serving.cli.admin", "--target",
            f"127.0.0.1:{client.running.admin_port}", "delete-user", "bob", cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
        bad = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "serving.cli.admin", "--target",
            f"127.0.0.1:{client.running.admin_port}", "delete-user", "", cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        bad_out, _ = await asyncio.wait_for(bad.communicate(), timeout=60)
    assert process.returncode == 0, out
    assert out.decode().startswith("deletion of user bob requested at ")
    assert bad.returncode == 1 and bad_out.decode().startswith("INVALID_ARGUMENT: user_id is required")
    assert [r.key for r in await _committed(stack, stack.topics["deletions"])] == [b"bob"]
