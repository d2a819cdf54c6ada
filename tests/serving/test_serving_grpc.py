"""The Recommender service end to end: real server on port 0, real Kafka and Redis."""

from __future__ import annotations

import math
import re
from typing import Any
import time

import grpc
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from conftest import DIM, PARTITIONS, Client, Stack, eventually
from grpc_health.v1 import health_pb2
from google.rpc import code_pb2, error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from serving_harness import exact_nearest, unit_rows, write_artifact

from protos import events_pb2, recommender_pb2, recommender_pb2_grpc
from serving.settings import ServingSettings

pytestmark = pytest.mark.integration

N_ITEMS = 40


def _catalog_vectors(seed: int = 3) -> dict[str, np.ndarray]:
    vectors = unit_rows(np.random.default_rng(seed), N_ITEMS, DIM)
    return {f"i{n:02d}": vectors[n] for n in range(N_ITEMS)}


def _items(item_ids: list[str]) -> list[events_pb2.Item]:
    return [
        events_pb2.Item(item_id=item_id, title=f"Title {item_id}",
                        categories=["Even" if int(item_id[1:]) % 2 == 0 else "Odd", "All"])
        for item_id in item_ids
    ]


def _query(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=DIM)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


async def _recommend(client: Client, user_id: str, k: int, **kwargs: object) -> recommender_pb2.RecommendResponse:
    return await client.stub.Recommend(
        recommender_pb2.RecommendRequest(user_id=user_id, k=k, **kwargs), timeout=5  # type: ignore[arg-type]
    )


def _ids(response: recommender_pb2.RecommendResponse | recommender_pb2.SimilarItemsResponse) -> list[str]:
    return [item.item_id for item in response.items]


async def test_recommend_returns_the_nearest_items_minus_seen_and_excluded(
    online_stack: Stack,
) -> None:
    """On the single Redis and on a Redis Cluster alike."""
    stack = online_stack
    vectors = _catalog_vectors()
    await stack.publish_vectors(vectors)
    await stack.publish_items(_items(list(vectors)))
    query = _query(11)
    nearest = exact_nearest(vectors, query, 10)
    seen, excluded = [nearest[0], nearest[3]], [nearest[1]]
    await stack.set_user("u1", query, seen=seen)

    async with stack.server() as client:
        response = await _recommend(client, "u1", 5, exclude_item_ids=excluded)
        filtered = await _recommend(client, "u1", 5, include_categories=["EVEN"],
                                    exclude_categories=["odd"])

    assert _ids(response) == exact_nearest(vectors, query, 5, set(seen) | set(excluded))
    assert response.strategy == "personal"
    assert response.model_version == "base"
    assert re.fullmatch(r"[0-9a-f]{32}", response.recommendation_id)
    first = response.items[0]
    assert first.title == f"Title {first.item_id}"
    # Explained by the seen item (of the two) closest to it, by its title.
    anchor = max(seen, key=lambda i: float(vectors[i] @ vectors[first.item_id]))
    assert first.reason == f"similar to Title {anchor}"
    assert list(first.categories) == _items([first.item_id])[0].categories
    np.testing.assert_allclose([item.score for item in response.items],
                               [float(vectors[i] @ query) for i in _ids(response)], atol=1e-5)

    evens = {item_id: vector for item_id, vector in vectors.items() if int(item_id[1:]) % 2 == 0}
    assert _ids(filtered) == exact_nearest(evens, query, 5, set(seen))


async def test_unknown_user_gets_popular_items_and_seen_ones_are_left_out(
    online_stack: Stack,
) -> None:
    """On the single Redis and on a Redis Cluster alike."""
    stack = online_stack
    await stack.set_popular({"p1": 50, "p2": 40, "p3": 30, "p4": 20, "p5": 10})
    await stack.set_user("has-history", None, seen=["p1", "p3"])
    await stack.set_user("other-model", _query(1), version="another-model")
    async with stack.server() as client:
        unknown = await _recommend(client, "never-seen", 3)
        history = await _recommend(client, "has-history", 3, exclude_item_ids=["p4"])
        other = await _recommend(client, "other-model", 2)
    assert _ids(unknown) == ["p1", "p2", "p3"]
    assert unknown.strategy == "popular" and unknown.model_version == "base"
    assert [item.reason for item in unknown.items] == ["popular with other shoppers"] * 3
    assert [item.score for item in unknown.items] == [50, 40, 30]
    assert _ids(history) == ["p2", "p5"]  # fewer than k: nothing else is left
    assert (_ids(other), other.strategy) == (["p1", "p2"], "popular")


async def test_exclusion_follows_the_configured_event_types_and_trending_ranks_cold_start(
    online_stack: Stack,
) -> None:
    """On the single Redis and on a Redis Cluster alike."""
    stack = online_stack
    await stack.set_popular({"p1": 50, "p2": 40, "p3": 30, "p4": 20, "p5": 10})
    now = int(time.time() * 1000)
    # Bought long ago (no longer in the capped sr:seen), viewed just now.
    await stack.redis.zadd(stack.keys.acts(events_pb2.PURCHASE, "buyer"), {"p1": now - 10**9})
    await stack.redis.zadd(stack.keys.acts(events_pb2.VIEW, "buyer"), {"p2": now})
    await stack.set_user("buyer", None, seen=["p2"])
    async with stack.server() as client:  # default: every event type excluded
        every_type = await _recommend(client, "buyer", 3)
    assert _ids(every_type) == ["p3", "p4", "p5"]
    async with stack.server(exclude_event_types=["purchase"]) as client:
        bought_only = await _recommend(client, "buyer", 3)
        cold = await _recommend(client, "newcomer", 2)
    assert _ids(bought_only) == ["p2", "p3", "p4"]  # viewed items may come back, bought ones not
    assert _ids(cold) == ["p1", "p2"]  # no trending window written yet: all-time popular
    await stack.redis.zadd(stack.keys.trending("24h"), {"p5": 3.0, "p4": 2.0})
    async with stack.server(exclude_event_types=[]) as client:
        trending = await _recommend(client, "buyer", 3)
    assert _ids(trending) == ["p5", "p4", "p1"]  # the window ranks first; nothing is excluded
    assert [item.reason for item in trending.items] == ["trending now"] * 2 + [
        "popular with other shoppers"]


async def test_trending_scores_are_counts_decayed_to_now_whatever_the_base_time(
    online_stack: Stack,
) -> None:
    """On the single Redis and on a Redis Cluster alike."""
    stack = online_stack
    # As streams writes them (docs/contracts.md §3): events of weights 5, 3 and 1 half an
    # hour ago, against a base a day old in a 1-hour window: raw scores near 1.6e10.
    tau_ms, now = 3_600_000.0, time.time() * 1000
    base, event_time = now - 24 * tau_ms, now - tau_ms / 2
    weights = {"t1": 5.0, "t2": 3.0, "t3": 1.0}
    raw = {item_id: w * math.exp((event_time - base) / tau_ms) for item_id, w in weights.items()}
    await stack.redis.zadd(stack.keys.trending("1h"), raw)
    await stack.redis.set(stack.keys.trending_base("1h"), repr(base))
    async with stack.server(trending_window="1h") as client:
        response = await _recommend(client, "newcomer", 3)
    assert response.strategy == "popular"
    assert _ids(response) == sorted(raw, key=raw.__getitem__, reverse=True)  # the raw order
    expected = [w * math.exp(-0.5) for w in weights.values()]  # 3.03, 1.82, 0.61
    # rel 1e-3: the seconds the test takes decay the counts by far less.
    assert [item.score for item in response.items] == pytest.approx(expected, rel=1e-3)
    assert all(0 <= item.score <= sum(weights.values()) for item in response.items)


def test_unknown_event_types_in_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        ServingSettings(exclude_event_types=["purchase", "wishlist"])


async def test_popular_items_backfill_personal_ones_without_duplicates(stack: Stack) -> None:
    vectors = dict(list(_catalog_vectors().items())[:4])  # i00..i03
    await stack.publish_vectors(vectors)
    query = _query(5)
    nearest = exact_nearest(vectors, query, 4)
    await stack.set_user("u", query, seen=[nearest[2]])
    await stack.set_popular({nearest[0]: 90, "hit1": 80, nearest[2]: 70, "hit2": 60, "hit3": 50})
    async with stack.server() as client:
        response = await _recommend(client, "u", 6)
    assert _ids(response) == [nearest[0], nearest[1], nearest[3], "hit1", "hit2", "hit3"]
    # No catalog entry: the seen item is named by its id.
    assert [item.reason for item in response.items] == (
        [f"similar to {nearest[2]}"] * 3 + ["popular with other shoppers"] * 3
    )
    assert response.strategy == "personal"


async def test_bad_arguments_are_invalid_argument_with_a_message(stack: Stack) -> None:
    async with stack.server(max_k=20, max_exclude=2) as client:
        for k in (0, 21):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _recommend(client, "u", k)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.details() == f"k must be between 1 and 20, got {k}"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _recommend(client, "u", 5, exclude_item_ids=["a", "b", "c"])
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "at most 2" in caught.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _recommend(client, "", 5)
        assert (caught.value.code(), caught.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT, "user_id is required")


async def test_similar_items_are_the_nearest_except_the_item_itself(stack: Stack) -> None:
    vectors = _catalog_vectors()
    await stack.publish_vectors(vectors)
    async with stack.server() as client:
        response = await client.stub.SimilarItems(
            recommender_pb2.SimilarItemsRequest(item_id="i07", k=5, exclude_item_ids=["i00"]))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id="nope", k=5))
    assert _ids(response) == exact_nearest(vectors, vectors["i07"], 5, {"i07", "i00"})
    assert response.model_version == "base"
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'nope'" in caught.value.details()


async def test_unreachable_redis_is_unavailable(stack: Stack) -> None:
    async with stack.server(redis_url="redis://127.0.0.1:1/0", redis_timeout_s=0.5) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _recommend(client, "u", 5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details().startswith("Redis is unavailable")


async def test_a_vector_published_while_serving_becomes_recommendable(stack: Stack) -> None:
    await stack.publish_vectors(_catalog_vectors())
    query = _query(21)
    await stack.set_user("u", query)
    async with stack.server() as client:
        before = await _recommend(client, "u", 3)
        assert "fresh" not in _ids(before)
        await stack.publish_vectors({"fresh": query})

        async def fresh_first() -> bool:
            return _ids(await _recommend(client, "u", 3))[0] == "fresh"

        await eventually(fresh_first)
        similar = await client.stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id="fresh", k=1))
    assert len(similar.items) == 1 and similar.items[0].item_id != "fresh"


async def test_vectors_of_another_model_version_are_ignored(stack: Stack) -> None:
    await stack.publish_vectors(_catalog_vectors())
    query = _query(31)
    await stack.set_user("u", query)
    async with stack.server() as client:
        # Same partition, so once the marker is in, the foreign vector before it was read too.
        await stack.publish_vectors({"ghost": query}, version="another-model", partition=0)
        await stack.publish_vectors({"marker": -query}, partition=0)

        async def marker_indexed() -> bool:
            try:
                await client.stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id="marker", k=1))
            except grpc.aio.AioRpcError:
                return False
            return True

        await eventually(marker_indexed)
        response = await _recommend(client, "u", 50)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id="ghost", k=1))
    assert "ghost" not in _ids(response) and "marker" in _ids(response)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def _event(n: int, user_id: str) -> events_pb2.Event:
    return events_pb2.Event(
        event_id=f"e{n}", user_id=user_id, item_id=f"i{n:02d}", type=events_pb2.CLICK,
        timestamp_ms=int(time.time() * 1000), context={"device": "test"},
    )


async def test_tracked_events_are_on_the_events_topic_keyed_by_user(stack: Stack) -> None:
    events = [_event(1, "alice"), _event(2, "bob"), _event(3, "alice")]
    async with stack.server() as client:
        reply = await client.stub.TrackEvents(recommender_pb2.TrackEventsRequest(events=events))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.stub.TrackEvents(recommender_pb2.TrackEventsRequest())
    assert reply.accepted == 3
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    consumer = AIOKafkaConsumer(stack.topics["events"], bootstrap_servers=stack.kafka,
                                group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        received: list[tuple[str, events_pb2.Event]] = []
        deadline = time.monotonic() + 20
        while len(received) < 3 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                received += [(r.key.decode(), events_pb2.Event.FromString(r.value)) for r in records]
    finally:
        await consumer.stop()
    assert sorted(received, key=lambda pair: pair[1].event_id) == [(e.user_id, e) for e in events]
    alice = [event.event_id for key, event in received if key == "alice"]
    assert alice == ["e1", "e3"]  # one partition per user keeps their order


async def _everything_on(stack: Stack, topic: str) -> list[events_pb2.Event]:
    """Every record of `topic` (of the stack's partitions) up to its end offsets now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        received: list[events_pb2.Event] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                received += [events_pb2.Event.FromString(r.value) for r in records]
    finally:
        await consumer.stop()
    return received


async def test_a_call_with_a_bad_event_is_refused_whole_with_standard_details(stack: Stack) -> None:
    good = [_event(10, "alice"), _event(11, "bob")]
    bad = [_event(20, "carol"), _event(21, "dave"), _event(22, "erin"), _event(23, "frank")]
    bad[1].event_id = ""
    bad[3].ClearField("timestamp_ms")
    bad[3].type = events_pb2.EVENT_TYPE_UNSPECIFIED
    async with stack.server() as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.stub.TrackEvents(recommender_pb2.TrackEventsRequest(events=bad))
        reply = await client.stub.TrackEvents(recommender_pb2.TrackEventsRequest(events=good))
        # The longest problems, on every event of the largest call: the details still fit
        # a client's default metadata limit.
        worst = events_pb2.Event(event_id="", user_id="", item_id="", type=99,
                                 timestamp_ms=-(2**63), value=float("nan"))
        with pytest.raises(grpc.aio.AioRpcError) as flooded:
            await client.stub.TrackEvents(recommender_pb2.TrackEventsRequest(events=[worst] * 1000))
    assert flooded.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    flood_status = rpc_status.from_call(flooded.value)
    assert flood_status is not None and flood_status.details
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("2 of 4 events are invalid, none was written: "
                                             "events[1].event_id: event_id is empty")
    status = rpc_status.from_call(caught.value)  # the grpc-status-details-bin trailer
    assert status is not None and status.code == code_pb2.INVALID_ARGUMENT
    (detail,) = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    assert [(v.field, v.reason) for v in bad_request.field_violations] == [
        ("events[1].event_id", "MISSING_FIELD"),
        ("events[3].timestamp_ms", "MISSING_FIELD"),
        ("events[3].type", "UNKNOWN_EVENT_TYPE"),
    ]
    assert bad_request.field_violations[2].description == "type 0 is not a known EventType"
    assert reply.accepted == 2
    on_topic = await _everything_on(stack, stack.topics["events"])
    assert sorted(event.event_id for event in on_topic) == ["e10", "e11"]  # nothing of the bad call


async def test_events_not_acknowledged_in_time_are_unavailable(stack: Stack) -> None:
    async with stack.server(track_timeout_s=1e-6) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.stub.TrackEvents(
                recommender_pb2.TrackEventsRequest(events=[_event(1, "alice")]))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details().startswith("Kafka did not acknowledge")


async def test_health_is_serving_echo_answers_and_reflection_lists_the_service(stack: Stack) -> None:
    async with stack.server() as client:
        echo = await recommender_pb2_grpc.DiagnosticsStub(client.channel).Echo(
            recommender_pb2.EchoMessage(payload=b"hi"))
        assert echo.payload == b"hi"
        overall = await client.health.Check(health_pb2.HealthCheckRequest(service=""))
        service = await client.health.Check(
            health_pb2.HealthCheckRequest(service="streamrec.v1.Recommender"))
        reflection = reflection_pb2_grpc.ServerReflectionStub(client.channel)
        call = reflection.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        listed = await call.read()
        await call.write(reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="streamrec.v1.Recommender"))
        described = await call.read()
        await call.done_writing()
    assert overall.status == service.status == health_pb2.HealthCheckResponse.SERVING
    names = {s.name for s in listed.list_services_response.service}
    assert {"streamrec.v1.Recommender", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert described.file_descriptor_response.file_descriptor_proto


async def test_the_production_artifact_is_loaded_and_its_version_served(stack: Stack) -> None:
    vectors = _catalog_vectors(seed=8)
    item_ids = list(vectors)[:20]
    write_artifact(stack.artifact_dir, "20261122T230000Z", item_ids,
                   np.stack([vectors[i] for i in item_ids]))
    version = "20261122T230000Z"
    await stack.publish_vectors({"only-base": vectors["i30"]})  # the bootstrap model's space
    await stack.publish_vectors({"new-item": vectors["i31"]}, version=version)
    query = _query(41)
    await stack.set_user("current", query, version=version)
    await stack.set_user("stale", query, version="base")
    await stack.set_popular({"i05": 3.0})
    async with stack.server() as client:
        similar = await client.stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id="i00", k=5))
        current = await _recommend(client, "current", 4)
        stale = await _recommend(client, "stale", 4)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id="only-base", k=1))
    served = {i: vectors[i] for i in item_ids} | {"new-item": vectors["i31"]}
    assert similar.model_version == current.model_version == stale.model_version == version
    assert _ids(similar) == exact_nearest(served, vectors["i00"], 5, {"i00"})
    assert (current.strategy, _ids(current)) == ("personal", exact_nearest(served, query, 4))
    assert (stale.strategy, _ids(stale)) == ("popular", ["i05"])
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_serving_creates_the_topics_it_writes_with_their_contract_settings(
    stack: Stack, owned_topics: str, describe_topics: Any
) -> None:
    written = {"topic_events": f"events.created-{owned_topics}",
               "topic_recommendations": f"recommendations.created-{owned_topics}"}
    assert describe_topics(list(written.values())) == {}
    async with stack.server(**written, topic_partitions=3, log_retention_ms=86_400_000):
        found = describe_topics(list(written.values()))
    events, recommendations = found[written["topic_events"]], found[written["topic_recommendations"]]
    assert events[0] == recommendations[0] == 3
    assert events[1]["cleanup.policy"] == recommendations[1]["cleanup.policy"] == "delete"
    assert recommendations[1]["retention.ms"] == "86400000"
