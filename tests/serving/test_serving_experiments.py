"""Filters, batches, versions, experiments, auth, deadlines and the report, end to end:
real server on port 0, real Kafka and Redis."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import DIM, Client, Stack, eventually
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_harness import exact_nearest, unit_rows, write_artifact

from contracts import routing as contract
from protos import events_pb2, recommender_pb2, recommender_pb2_grpc
from serving.cli.report import build
from serving.server import running

pytestmark = pytest.mark.integration

N_ITEMS = 200
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _vectors(seed: int = 5, n: int = N_ITEMS) -> dict[str, np.ndarray]:
    rows = unit_rows(np.random.default_rng(seed), n, DIM)
    return {f"i{k:03d}": rows[k] for k in range(n)}


def _item(item_id: str) -> events_pb2.Item:
    n = int(item_id[1:])
    return events_pb2.Item(
        item_id=item_id, title=f"Item {n}", price=float(n),
        categories=[("Shoes", "Bags", "Hats")[n % 3], "All"],
        availability=events_pb2.OUT_OF_STOCK if n % 5 == 0 else events_pb2.IN_STOCK,
    )


def _ids(response: recommender_pb2.RecommendResponse) -> list[str]:
    return [item.item_id for item in response.items]


def _admin(client: Client) -> tuple[grpc.aio.Channel, recommender_pb2_grpc.AdminStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{client.running.admin_port}")
    return channel, recommender_pb2_grpc.AdminStub(channel)


async def test_filters_inside_retrieval_still_give_k_results(stack: Stack) -> None:
    vectors = _vectors()
    await stack.publish_vectors(vectors)
    await stack.publish_items([_item(i) for i in vectors])
    query = vectors["i007"]
    near = exact_nearest(vectors, query, 60)
    await stack.set_user("u", query, seen=near[:40])  # the 40 nearest are seen
    async with stack.server(candidate_margin=0) as client:
        response = await client.stub.Recommend(recommender_pb2.RecommendRequest(
            user_id="u", k=10, exclude_item_ids=near[40:45], include_categories=["shoes"],
            min_price=20, max_price=180), timeout=5)
        capped = await client.stub.Recommend(recommender_pb2.RecommendRequest(
            user_id="u", k=9, max_per_category=3), timeout=5)
        with_seen = await client.stub.Recommend(recommender_pb2.RecommendRequest(
            user_id="u", k=3, include_seen=True), timeout=5)
    allowed = {i: v for i, v in vectors.items()
               if int(i[1:]) % 3 == 0 and int(i[1:]) % 5 and 20 <= int(i[1:]) <= 180}
    expected = exact_nearest(allowed, query, 10, set(near[:45]))
    assert _ids(response) == expected and len(set(_ids(response))) == 10
    assert response.strategy == "personal"
    assert all(item.reason.startswith("similar to Item ") for item in response.items)
    firsts = [item.categories[0] for item in capped.items]
    assert len(capped.items) == 9 and all(firsts.count(c) == 3 for c in set(firsts))
    in_stock = [i for i in exact_nearest(vectors, query, 10) if int(i[1:]) % 5]
    assert _ids(with_seen) == in_stock[:3]


@pytest.mark.parametrize("coalesce", [False, True])
async def test_recommend_batch_answers_each_request_in_order(stack: Stack, coalesce: bool) -> None:
    vectors = _vectors()
    await stack.publish_vectors(vectors)
    await stack.set_user("a", vectors["i001"])
    await stack.set_user("b", vectors["i002"])
    await stack.set_popular({"i010": 5, "i011": 4})
    requests = [recommender_pb2.RecommendRequest(user_id=u, k=k) for u, k in (("a", 3), ("new", 2), ("b", 4))]
    async with stack.server(max_batch=3, redis_coalesce=coalesce, search_coalesce=coalesce) as client:
        batch = await client.stub.RecommendBatch(
            recommender_pb2.RecommendBatchRequest(requests=requests), timeout=5)
        singles = [await client.stub.Recommend(r, timeout=5) for r in requests]
        # Concurrent calls (batched together when coalescing) each get their own user's answer.
        together = await asyncio.gather(*(client.stub.Recommend(r, timeout=5) for r in requests * 3))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.stub.RecommendBatch(
                recommender_pb2.RecommendBatchRequest(requests=requests * 2), timeout=5)
    assert [_ids(r) for r in together] == [_ids(r) for r in singles] * 3
    assert [_ids(r) for r in batch.responses] == [_ids(r) for r in singles]
    assert [r.strategy for r in batch.responses] == ["personal", "popular", "personal"]
    assert len({r.recommendation_id for r in batch.responses}) == 3
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_admin_promotes_splits_and_rolls_back_without_restart(stack: Stack, tmp_path: Path) -> None:
    base = _vectors(seed=1, n=30)
    await stack.publish_vectors(base)
    v2 = _vectors(seed=2, n=30)
    v2_dir = write_artifact(tmp_path / "store", "v2", list(v2), np.stack(list(v2.values())))
    users = [f"user-{n}" for n in range(40)]
    for user in users:
        await stack.set_user(user, base["i003"], version="base")
        await stack.set_user(user + "-v2", v2["i004"], version="v2")
    async with stack.server() as client:
        channel, admin = _admin(client)
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await admin.Promote(recommender_pb2.PromoteRequest(version="v2"))
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            status = await admin.Promote(recommender_pb2.PromoteRequest(version="v2", uri=str(v2_dir)))
            assert (status.production, status.previous) == ("v2", "base")
            on_v2 = await client.stub.Recommend(recommender_pb2.RecommendRequest(user_id="user-1-v2", k=5))
            assert (on_v2.model_version, on_v2.strategy) == ("v2", "personal")
            assert _ids(on_v2) == exact_nearest(v2, v2["i004"], 5)

            status = await admin.SetSplit(recommender_pb2.SetSplitRequest(version="base", percent=50))
            assert (status.candidate, status.percent) == ("base", 50)
            served = [(await client.stub.Recommend(recommender_pb2.RecommendRequest(user_id=u, k=2))).model_version
                      for u in users]
            again = [(await client.stub.Recommend(recommender_pb2.RecommendRequest(user_id=u, k=2))).model_version
                     for u in users]
            assert served == again and {"base", "v2"} == set(served)  # sticky per user

            status = await admin.Rollback(recommender_pb2.RollbackRequest())
            assert (status.production, status.previous) == ("base", "v2")
            back = await client.stub.Recommend(recommender_pb2.RecommendRequest(user_id="user-1", k=5))
            assert back.model_version == "base" and _ids(back) == exact_nearest(base, base["i003"], 5)
            listed = await admin.Status(recommender_pb2.StatusRequest())
            assert {m.version for m in listed.loaded} == {"base", "v2"}


async def test_a_routing_record_from_training_swaps_the_version_live(stack: Stack, tmp_path: Path) -> None:
    base = _vectors(seed=1, n=30)
    await stack.publish_vectors(base)
    v2 = _vectors(seed=2, n=30)
    v2_dir = write_artifact(tmp_path / "store", "v2", list(v2), np.stack(list(v2.values())))
    # The user's vector is of the old version; their history is what the new one can use.
    await stack.set_user("u", base["i003"], version="base", seen=["i005", "i006"])
    async with stack.server() as client:
        before = await client.stub.Recommend(recommender_pb2.RecommendRequest(user_id="u", k=4))
        assert (before.model_version, before.strategy) == ("base", "personal")
        record = contract.promoted(events_pb2.Routing(production="base"), "v2", f"file://{v2_dir}",
                                   by="training", at_ms=int(time.time() * 1000))
        await stack.producer.send_and_wait(stack.topics["routing"], key=contract.KEY,
                                           value=record.SerializeToString())

        async def swapped() -> bool:
            reply = await client.stub.Recommend(recommender_pb2.RecommendRequest(user_id="u", k=4))
            return reply.model_version == "v2"

        await eventually(swapped)
        after = await client.stub.Recommend(recommender_pb2.RecommendRequest(user_id="u", k=4))
        status = await _admin(client)[1].Status(recommender_pb2.StatusRequest())
    # Never the base vector against the v2 index: the mean of the seen items in v2's space.
    mean = (v2["i005"] + v2["i006"]) / 2
    assert after.strategy == "recent_items"
    assert _ids(after) == exact_nearest(v2, mean, 4, {"i005", "i006"})
    assert (status.production, status.previous, status.revision, status.changed_by) == \
        ("v2", "base", 1, "training")


async def test_a_record_naming_an_unreadable_version_keeps_the_routing_and_says_why(
    stack: Stack, tmp_path: Path
) -> None:
    await stack.publish_vectors(_vectors(seed=1, n=10))
    async with stack.server() as client:
        record = contract.promoted(events_pb2.Routing(production="base"), "v9", str(tmp_path / "gone"),
                                   by="training", at_ms=int(time.time() * 1000))
        await stack.producer.send_and_wait(stack.topics["routing"], key=contract.KEY,
                                           value=record.SerializeToString())
        channel, admin = _admin(client)
        async with channel:
            async def reported() -> bool:
                status = await admin.Status(recommender_pb2.StatusRequest())
                return bool(status.routing_error)

            await eventually(reported)
            status = await admin.Status(recommender_pb2.StatusRequest())
            assert (status.production, status.revision) == ("base", 0)
            assert status.routing_error.startswith("revision 1 (promote by training): cannot read")
            reply = await client.stub.Recommend(recommender_pb2.RecommendRequest(user_id="x", k=3))
            assert reply.model_version == "base"
            # the next good change clears it
            status = await admin.SetSplit(recommender_pb2.SetSplitRequest(version="", percent=0))
            assert (status.production, status.revision, status.routing_error) == ("base", 2, "")


async def test_calls_without_a_valid_token_are_unauthenticated(stack: Stack) -> None:
    await stack.set_popular({"p": 1})
    async with stack.server(auth_tokens=["s3cret"]) as client:  # health needs no token
        request = recommender_pb2.RecommendRequest(user_id="u", k=1)
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.stub.Recommend(request, metadata=metadata, timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = await client.stub.Recommend(request, metadata=(("authorization", "Bearer s3cret"),))
    assert _ids(reply) == ["p"]


@pytest.fixture
async def silent_redis() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never answers (a hung Redis)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_the_callers_deadline_bounds_the_work_and_metrics_show_it(
    stack: Stack, silent_redis: int
) -> None:
    async with stack.server(redis_url=f"redis://127.0.0.1:{silent_redis}/0", redis_timeout_s=20,
                            metrics_port=0) as client:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.stub.Recommend(recommender_pb2.RecommendRequest(user_id="u", k=1), timeout=0.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        url = f"http://127.0.0.1:{client.running.metrics_port}/metrics"

        async def counted() -> bool:
            text = (await asyncio.to_thread(urllib.request.urlopen, url)).read().decode()
            # The server gave up by itself (well before the 20 s Redis timeout).
            return ('streamrec_serving_errors_total{code="DEADLINE_EXCEEDED",method="Recommend"} 1.0'
                    in text)

        await eventually(counted, timeout_s=10)
        assert time.monotonic() - started < 10
        text = urllib.request.urlopen(url).read().decode()
    assert 'streamrec_serving_latency_seconds_count{method="Recommend"} 1.0' in text
    assert 'streamrec_serving_index_items{version="base"}' in text


async def test_report_gives_click_through_and_conversion_per_version(stack: Stack, tmp_path: Path) -> None:
    base = _vectors(seed=1, n=30)
    await stack.publish_vectors(base)
    v2 = _vectors(seed=2, n=30)
    v2_dir = write_artifact(tmp_path / "store", "v2", list(v2), np.stack(list(v2.values())))
    await stack.set_popular({"i001": 3, "i002": 2})
    async with stack.server() as client:
        channel, admin = _admin(client)
        async with channel:
            await admin.Promote(recommender_pb2.PromoteRequest(version="v2", uri=str(v2_dir)))
            on_v2 = [await client.stub.Recommend(recommender_pb2.RecommendRequest(user_id=f"a{n}", k=2))
                     for n in range(4)]
            await admin.Rollback(recommender_pb2.RollbackRequest())
            on_base = [await client.stub.Recommend(recommender_pb2.RecommendRequest(user_id=f"b{n}", k=2))
                       for n in range(2)]
    # Leaving the server drained the recommendation log into Kafka.
    assert {r.model_version for r in on_v2} == {"v2"} and {r.model_version for r in on_base} == {"base"}
    clicks = [(on_v2[0], events_pb2.CLICK), (on_v2[0], events_pb2.PURCHASE), (on_v2[1], events_pb2.CLICK),
              (on_base[0], events_pb2.CLICK), (on_base[0], events_pb2.VIEW)]
    for n, (response, kind) in enumerate(clicks):
        event = events_pb2.Event(event_id=f"e{n}", user_id="x", item_id=response.items[0].item_id,
                                 type=kind, recommendation_id=response.recommendation_id)
        await stack.producer.send(stack.topics["enriched"], key=b"x",
                                  value=events_pb2.EnrichedEvent(event=event).SerializeToString())
    await stack.producer.flush()
    reports, unattributed = await build(stack.settings())
    v2_report, base_report = reports["v2"], reports["base"]
    assert (v2_report.served, v2_report.clicked, v2_report.converted) == (4, 2, 1)
    assert (v2_report.click_through, v2_report.conversion) == (0.5, 0.25)
    assert (base_report.served, base_report.clicked, base_report.click_through) == (2, 1, 0.5)
    assert unattributed == 0


async def test_admin_cli_shows_and_changes_the_routing(stack: Stack, tmp_path: Path) -> None:
    await stack.publish_vectors(_vectors(seed=1, n=10))
    v2 = _vectors(seed=2, n=12)
    v2_dir = write_artifact(tmp_path / "store", "v2", list(v2), np.stack(list(v2.values())))

    async def cli(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "serving.cli.admin", "--target", target, *args, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
        return process.returncode or 0, out.decode()

    async with stack.server() as client:
        target = f"127.0.0.1:{client.running.admin_port}"
        code, out = await cli("promote", "--version", "v2", "--uri", str(v2_dir))
        assert code == 0 and "production: v2" in out and "previous:   base" in out
        assert "loaded:     v2 (12 items, flat)" in out
        code, out = await cli("split", "--version", "base", "--percent", "25")
        assert code == 0 and "candidate:  base (25 % of users)" in out
        code, out = await cli("rollback")
        assert code == 0 and "production: base" in out
        code, out = await cli("promote", "--version", "nope")
        assert code == 1 and out.startswith("FAILED_PRECONDITION: model version 'nope' is not loaded")


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by the openssl command line."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_tls_port_answers_tls_clients_only(stack: Stack, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    await stack.set_popular({"p": 1})
    request = recommender_pb2.RecommendRequest(user_id="u", k=1)
    async with running(stack.settings(tls_cert_file=cert, tls_key_file=key)) as run:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{run.port}", credentials) as channel:
            reply = await recommender_pb2_grpc.RecommenderStub(channel).Recommend(request, timeout=10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{run.port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await recommender_pb2_grpc.RecommenderStub(plain).Recommend(request, timeout=5)
    assert _ids(reply) == ["p"]
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_stopping_goes_not_serving_then_lets_calls_in_flight_finish(
    stack: Stack, silent_redis: int
) -> None:
    settings = stack.settings(redis_url=f"redis://127.0.0.1:{silent_redis}/0", redis_timeout_s=1.5,
                              grace_s=10)
    request = recommender_pb2.RecommendRequest(user_id="u", k=1)
    statuses: list[int] = []
    async with running(settings) as run:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{run.port}")
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))

        async def follow() -> None:
            async for reply in watch:
                statuses.append(reply.status)

        following = asyncio.ensure_future(follow())
        await eventually(lambda: asyncio.sleep(0, health_pb2.HealthCheckResponse.SERVING in statuses))
        call = asyncio.ensure_future(recommender_pb2_grpc.RecommenderStub(channel).Recommend(request))
        await asyncio.sleep(0.3)  # the call is in flight, waiting on the hung Redis
        stopping = time.monotonic()
    # Leaving `running` went NOT_SERVING first, then stopped with a grace period: the call
    # got its own answer (Redis timed out after 1.5 s) instead of being cut off.
    assert time.monotonic() - stopping >= 1.0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details().startswith("Redis is unavailable")
    await asyncio.gather(following, return_exceptions=True)
    await channel.close()
    assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
