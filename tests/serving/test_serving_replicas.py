"""Independent ``python -m serving`` replicas, each on its own port, behind the client's
round robin (``contracts/channel.py``): the same answers and experiment routing from
every replica, and a rolling restart under load that fails no call."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import Stack, eventually
from serving_harness import Lines, server_env, unit_rows, write_artifact

from contracts.channel import recommender_channel
from protos import recommender_pb2, recommender_pb2_grpc
from serving.models import in_candidate
from serving.settings import ServingSettings

ROOT = Path(__file__).resolve().parents[2]
USERS = [f"u{n}" for n in range(30)]
SPLIT_PERCENT = 50.0
LOAD_CONCURRENCY = 4  # calls in flight at once through the round-robin channel
_LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+) \(admin (\d+), metrics (\d+)\)")
_RECOMMEND_CALLS = re.compile(r'^streamrec_serving_latency_seconds_count\{method="Recommend"\} (\S+)$', re.M)

Answer = tuple[str, str, tuple[tuple[str, float, str], ...]]


def _free_port() -> int:
    """A port free now, for a replica that must come back on the same one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answer(reply: recommender_pb2.RecommendResponse) -> Answer:
    """What must not depend on the replica: version, strategy, items with scores and reasons."""
    return (reply.model_version, reply.strategy,
            tuple((item.item_id, item.score, item.reason) for item in reply.items))


@dataclass
class Replica:
    """One ``python -m serving`` process; started again on the same port after a stop."""

    settings: ServingSettings
    process: asyncio.subprocess.Process | None = None
    lines: Lines | None = None
    admin_port: int = 0
    metrics_port: int = 0
    logs: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.settings.port}"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "serving", cwd=ROOT, env=server_env(self.settings),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        self.lines = Lines(self.process.stdout)
        found = await self.lines.wait_for(_LISTENING.pattern, 90)
        assert int(found.group(1)) == self.settings.port
        self.admin_port, self.metrics_port = int(found.group(2)), int(found.group(3))
        await self.lines.wait_for(r"catalog topics loaded: SERVING", 90)

    async def stop(self, signum: int = signal.SIGTERM) -> float:
        """Signal the process; the seconds it took to exit (with status 0)."""
        assert self.process is not None and self.lines is not None
        started = time.monotonic()
        if self.process.returncode is None:
            self.process.send_signal(signum)
        await asyncio.wait_for(self.process.wait(), 60)
        took = time.monotonic() - started
        await self.lines.close()
        self.logs.append(self.lines.text)
        assert self.process.returncode == 0, self.lines.text
        return took

    async def recommend_calls(self) -> float:
        """Recommend calls this process answered (its /metrics)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        found = _RECOMMEND_CALLS.search(text)
        return float(found.group(1)) if found else 0.0

    def admin(self, channel: grpc.aio.Channel) -> recommender_pb2_grpc.AdminStub:
        return recommender_pb2_grpc.AdminStub(channel)


async def _catalog(stack: Stack) -> None:
    """Two versions of 200 items (v1 production), users with vectors of either version,
    seen items and popular counts: every strategy occurs."""
    rng = np.random.default_rng(17)
    ids = [f"m{n}" for n in range(200)]
    write_artifact(stack.artifact_dir, "v2", ids, unit_rows(rng, len(ids), 8))
    write_artifact(stack.artifact_dir, "v1", ids, unit_rows(rng, len(ids), 8))  # production.json: v1
    for n, user in enumerate(USERS):
        vector = unit_rows(rng, 1, 8)[0] if n % 3 != 2 else None
        await stack.set_user(user, vector, version="v1" if n % 3 == 0 else "v2",
                             seen=[f"m{(n * 7 + j) % 200}" for j in range(n % 4)])
    await stack.set_popular({f"m{n}": float(200 - n) for n in range(20)})


@pytest.fixture
async def replicas(stack: Stack, tmp_path: Path) -> AsyncIterator[list[Replica]]:
    """Two replicas on ports of their own, one index cache, started together; the split
    of `SPLIT_PERCENT` to v2 written through the first one's Admin, applied by both."""
    await _catalog(stack)
    pair = [Replica(stack.settings(port=_free_port(), metrics_port=0, shutdown_delay_s=1.0,
                                   index_cache_dir=tmp_path / "index-cache")) for _ in range(2)]
    try:
        await asyncio.gather(*(replica.start() for replica in pair))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{pair[0].admin_port}") as channel:
            status = await pair[0].admin(channel).SetSplit(recommender_pb2.SetSplitRequest(
                version="v2", percent=SPLIT_PERCENT, uri=str(stack.artifact_dir / "v2")), timeout=60)
        assert (status.production, status.candidate, status.percent) == ("v1", "v2", SPLIT_PERCENT)
        assert pair[1].lines is not None
        await pair[1].lines.wait_for(r"serving\.routing: routing revision 1 \(split by ", 30)
        yield pair
    finally:
        for replica in pair:
            if replica.process is not None and replica.process.returncode is None:
                await replica.stop()


async def _answers(address: str) -> dict[str, Answer]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        return {user: _answer(await stub.Recommend(recommender_pb2.RecommendRequest(user_id=user, k=5),
                                                   timeout=10))
                for user in USERS}


@pytest.mark.integration
@pytest.mark.slow
async def test_two_replicas_give_the_same_answers_and_the_same_experiment_routing(
    replicas: list[Replica],
) -> None:
    first, second = [await _answers(replica.address) for replica in replicas]
    assert first == second
    # The routing both follow from model-routing: each user in the arm their hash names.
    assert {user: answer[0] for user, answer in first.items()} == {
        user: "v2" if in_candidate(user, SPLIT_PERCENT) else "v1" for user in USERS}
    assert {answer[1] for answer in first.values()} >= {"personal", "recent_items", "popular"}
    similar = []
    for replica in replicas:
        async with grpc.aio.insecure_channel(replica.address) as channel:
            reply = await recommender_pb2_grpc.RecommenderStub(channel).SimilarItems(
                recommender_pb2.SimilarItemsRequest(item_id="m3", k=5, user_id="u4"), timeout=10)
            similar.append((reply.model_version, [(i.item_id, i.score) for i in reply.items]))
        # Each replica's DeleteUser producer has a transactional id of its own: neither fences the other.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.admin_port}") as channel:
            deleted = await replica.admin(channel).DeleteUser(
                recommender_pb2.DeleteUserRequest(user_id="gone"), timeout=30)
            assert deleted.requested_at_ms > 0
    assert similar[0] == similar[1] and len(similar[0][1]) == 5
    # Through the round-robin channel: both replicas take calls, and answer alike.
    async with recommender_channel([replica.address for replica in replicas]) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        before = [await replica.recommend_calls() for replica in replicas]
        for user in USERS:
            reply = await stub.Recommend(recommender_pb2.RecommendRequest(user_id=user, k=5), timeout=10)
            assert _answer(reply) == first[user]
        after = [await replica.recommend_calls() for replica in replicas]
    assert all(b - a >= len(USERS) // 4 for a, b in zip(before, after, strict=True)), (before, after)
    # The command-line client takes the replicas as one comma-separated target.
    targets = ",".join(replica.address for replica in replicas)
    for command in (["wait", "--timeout", "30"], ["recommend", "--user", "u0", "-k", "5"]):
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "serving.cli.client", "--target", targets, *command, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(client.communicate(), 60)
        assert client.returncode == 0, err.decode()
    assert f"user u0: {first['u0'][1]}, model {first['u0'][0]}" in out.decode()


@dataclass
class Load:
    """Recommend calls issued continuously through one channel, each answer checked."""

    stub: recommender_pb2_grpc.RecommenderStub
    expected: dict[str, Answer]
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def caller(self, offset: int) -> None:
        n = offset
        while not self.stop.is_set():
            user = USERS[n % len(USERS)]
            n += LOAD_CONCURRENCY
            try:
                reply = await self.stub.Recommend(recommender_pb2.RecommendRequest(user_id=user, k=5),
                                                  timeout=10)
            except grpc.aio.AioRpcError as error:
                self.failures.append(f"{user}: {error.code().name}: {error.details()}")
                continue
            if _answer(reply) != self.expected[user]:
                self.failures.append(f"{user}: answered {_answer(reply)}, expected {self.expected[user]}")
            self.answered += 1


@pytest.mark.integration
@pytest.mark.slow
async def test_a_rolling_restart_under_load_fails_no_call(replicas: list[Replica]) -> None:
    expected = await _answers(replicas[0].address)
    async with recommender_channel([replica.address for replica in replicas]) as channel:
        load = Load(recommender_pb2_grpc.RecommenderStub(channel), expected)
        callers = [asyncio.create_task(load.caller(n)) for n in range(LOAD_CONCURRENCY)]
        try:
            for replica in replicas:
                await eventually(partial(_answering, replica), 30)
            for replica in replicas:  # one at a time: SIGTERM, start again on its port, taking calls
                answered = load.answered
                took = await replica.stop()
                # NOT_SERVING, then shutdown_delay_s still answering, then grace_s for calls in
                # flight (the client's health watch is one of them)
                assert took < replica.settings.shutdown_delay_s + replica.settings.grace_s + 5
                assert "signal received: NOT_SERVING" in replica.logs[-1]
                assert load.answered > answered  # the other replica answered meanwhile
                await replica.start()
                await eventually(partial(_answering, replica), 30)
        finally:
            load.stop.set()
            await asyncio.gather(*callers)
    print(f"rolling restart of 2 replicas: {load.answered} Recommend calls answered, "
          f"{len(load.failures)} failed")
    assert load.failures == []
    assert load.answered > 100


async def _answering(replica: Replica) -> bool:
    """The replica answered calls of the round-robin channel (it is SERVING and connected)."""
    return await replica.recommend_calls() > 0
