"""``python -m serving`` with several workers: one port, one index build, an Admin change
reaching every worker through the routing topic, a killed worker started again and
routing as the others."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import Stack, eventually
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_harness import Lines, alive, server_env, unit_rows, write_artifact

from protos import recommender_pb2, recommender_pb2_grpc
from serving.errors import AddressUnavailable
from serving.workers import _own_port, reserve_port

ROOT = Path(__file__).resolve().parents[2]
CONNECTIONS = 8  # the kernel spreads connections over the workers, not calls


@pytest.mark.integration
async def test_workers_share_the_port_and_the_index_and_a_killed_one_comes_back_with_the_routing(
    stack: Stack, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    ids = [f"m{n}" for n in range(600)]
    write_artifact(stack.artifact_dir, "v2", ids, unit_rows(rng, 600, 16))
    write_artifact(stack.artifact_dir, "v1", ids, unit_rows(rng, 600, 16))  # production.json: v1
    await stack.set_user("u1", None, seen=["m1", "m2"])
    settings = stack.settings(workers=2, ivf_threshold=500, nprobe=8, dim=16,
                              index_cache_dir=tmp_path / "index-cache")
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "serving", cwd=ROOT, env=server_env(settings),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert server.stdout is not None
    lines = Lines(server.stdout)
    channels: list[grpc.aio.Channel] = []
    try:
        found = await lines.wait_for(r"2 workers: listening on 127\.0\.0\.1:(\d+) \(admin (\d+)\)")
        port, admin_port = int(found.group(1)), int(found.group(2))
        pids = [int(p) for p in re.findall(r"worker \d started: pid (\d+)", lines.text)]
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        # one IVF build, by the worker that took the cache's lock first; the other reads it
        assert len(re.findall(r"ivf index of 600 items \(dimension 16\)\n", lines.text)) == 1
        assert len(re.findall(r"ivf index of 600 items \(dimension 16\) read from", lines.text)) == 1

        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                              options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(CONNECTIONS)]

        async def answers() -> set[str]:
            versions = set()
            for channel in channels:
                reply = await recommender_pb2_grpc.RecommenderStub(channel).Recommend(
                    recommender_pb2.RecommendRequest(user_id="u1", k=5), timeout=10)
                assert len(reply.items) == 5 and {"m1", "m2"}.isdisjoint(i.item_id for i in reply.items)
                versions.add(reply.model_version)
            return versions

        for channel in channels:
            health = health_pb2_grpc.HealthStub(channel)

            async def serving(health: health_pb2_grpc.HealthStub = health) -> bool:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                return reply.status == health_pb2.HealthCheckResponse.SERVING

            await eventually(serving, 60)
        assert await answers() == {"v1"}

        async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_port}") as admin_channel:
            admin = recommender_pb2_grpc.AdminStub(admin_channel)
            status = await admin.Promote(recommender_pb2.PromoteRequest(
                version="v2", uri=str(stack.artifact_dir / "v2")), timeout=60)
            assert (status.production, status.previous) == ("v2", "v1")
            assert await answers() == {"v2"}
            for pid in pids:  # each worker applied it (connections may all reach one worker)
                await lines.wait_for(rf"\[{pid}\] serving.routing: routing revision 1 \(promote by ", 10)
            status = await admin.SetSplit(recommender_pb2.SetSplitRequest(version="v1", percent=100),
                                          timeout=60)
            assert (status.production, status.candidate, status.percent) == ("v2", "v1", 100)
            assert await answers() == {"v1"}

            assert status.revision == 2
            os.kill(pids[0], signal.SIGKILL)  # the next worker 0 reads the routing from the topic
            await lines.wait_for(r"worker 0 started: pid (\d+)\n(?:.|\n)*worker 0 answering again")
            restarted = int(re.findall(r"worker 0 started: pid (\d+)", lines.text)[-1])
            assert restarted not in pids and alive(restarted) and not alive(pids[0])
            await lines.wait_for(rf"\[{restarted}\] serving.routing: routing revision 2 \(split by ", 10)
            for _ in range(4):  # whichever worker answers
                status = await admin.Status(recommender_pb2.StatusRequest(), timeout=10)
                assert (status.production, status.previous, status.candidate, status.revision) == \
                    ("v2", "v1", "v1", 2)
            # DeleteUser is handed to a worker like the routing calls; a refusal keeps its details.
            deleted = await admin.DeleteUser(recommender_pb2.DeleteUserRequest(user_id="u9"),
                                             timeout=30)
            assert deleted.user_id == "u9" and deleted.requested_at_ms > 0
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await admin.DeleteUser(recommender_pb2.DeleteUserRequest(user_id=""), timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert any(key == "grpc-status-details-bin"
                       for key, _ in refused.value.trailing_metadata() or ())

            async def all_answer_v1() -> bool:
                try:
                    return await answers() == {"v1"}
                except grpc.aio.AioRpcError:  # a connection to the killed worker, reconnecting
                    return False

            await eventually(all_answer_v1, 60)
            pids = [restarted, pids[1]]
    finally:
        for channel in channels:
            await channel.close()
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), 90)
        await lines.close()
    assert server.returncode == 0, lines.text
    assert "signal received: stopping 2 workers" in lines.text
    assert not any(alive(pid) for pid in pids)


def test_a_worker_failing_at_start_stops_the_supervisor_with_its_exit_code(tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "production.json").write_text('{"version": "v9"}')
    env = dict(os.environ, STREAMREC_SERVING_ARTIFACT_DIR=str(tmp_path), STREAMREC_SERVING_PORT="0",
               STREAMREC_SERVING_WORKERS="2")
    done = subprocess.run([sys.executable, "-m", "serving"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "cannot serve: cannot read" in done.stderr  # the workers' own message
    assert re.search(r"worker \d exited with status 1 before it served", done.stderr)
    assert "Traceback" not in done.stderr


def test_a_second_supervisor_cannot_take_a_port_one_holds() -> None:
    reserved = reserve_port("127.0.0.1", 0)
    port = reserved.getsockname()[1]
    owner = _own_port("127.0.0.1", port)
    try:
        with pytest.raises(AddressUnavailable, match=f"127.0.0.1:{port}: another serving supervisor"):
            _own_port("127.0.0.1", port)
    finally:
        owner.close()
        reserved.close()
    _own_port("127.0.0.1", port).close()  # free again once the first let go
