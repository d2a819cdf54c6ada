"""Routing as a record on ``model-routing``: separate ``python -m serving`` processes and
one killed and started again all route as the last Admin change says."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from conftest import Stack, eventually
from serving_harness import unit_rows, write_artifact
from serving_harness import Lines, server_env as _env
from test_serving_workers import ROOT

from protos import recommender_pb2, recommender_pb2_grpc
from serving.models import in_candidate

pytestmark = pytest.mark.integration

USERS = [f"user-{n}" for n in range(40)]
DIM = 8


class Process:
    """One ``python -m serving`` with its own ports, its output read as it comes."""

    def __init__(self, stack: Stack) -> None:
        self._env = _env(stack.settings(port=0, admin_port=0, dim=DIM))
        self.process: asyncio.subprocess.Process | None = None
        self.lines: Lines | None = None
        self.channel: grpc.aio.Channel | None = None
        self.admin_channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "serving", cwd=ROOT, env=self._env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert self.process.stdout is not None
        self.lines = Lines(self.process.stdout)
        found = await self.lines.wait_for(r"listening on 127\.0\.0\.1:(\d+) \(admin (\d+),")
        await self.lines.wait_for(r"catalog topics loaded: SERVING")
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{found.group(1)}")
        self.admin_channel = grpc.aio.insecure_channel(f"127.0.0.1:{found.group(2)}")

    @property
    def admin(self) -> recommender_pb2_grpc.AdminStub:
        return recommender_pb2_grpc.AdminStub(self.admin_channel)

    async def versions(self) -> list[str]:
        """The version answering each of USERS."""
        stub = recommender_pb2_grpc.RecommenderStub(self.channel)
        return [(await stub.Recommend(recommender_pb2.RecommendRequest(user_id=u, k=2), timeout=10)).model_version
                for u in USERS]

    async def status(self) -> tuple[str, str, str, float, int]:
        s = await self.admin.Status(recommender_pb2.StatusRequest(), timeout=10)
        return s.production, s.previous, s.candidate, s.percent, s.revision

    async def close(self, signum: int = signal.SIGTERM) -> None:
        for channel in (self.channel, self.admin_channel):
            if channel is not None:
                await channel.close()
        if self.process is not None:
            if self.process.returncode is None:
                self.process.send_signal(signum)
            await asyncio.wait_for(self.process.wait(), 60)
        if self.lines is not None:
            await self.lines.close()


async def test_separate_processes_and_a_restarted_one_route_as_the_last_admin_change(
    stack: Stack,
) -> None:
    rng = np.random.default_rng(7)
    ids = [f"m{n}" for n in range(50)]
    write_artifact(stack.artifact_dir, "v2", ids, unit_rows(rng, 50, DIM))
    write_artifact(stack.artifact_dir, "v1", ids, unit_rows(rng, 50, DIM))  # production.json: v1
    one, two = Process(stack), Process(stack)
    try:
        await asyncio.gather(one.start(), two.start())
        assert await one.versions() == await two.versions() == ["v1"] * len(USERS)

        status = await one.admin.Promote(recommender_pb2.PromoteRequest(
            version="v2", uri=str(stack.artifact_dir / "v2")), timeout=60)
        assert (status.production, status.previous, status.revision) == ("v2", "v1", 1)
        status = await one.admin.SetSplit(recommender_pb2.SetSplitRequest(version="v1", percent=30),
                                          timeout=60)
        assert (status.candidate, status.percent, status.revision) == ("v1", 30, 2)
        expected = ["v1" if in_candidate(u, 30) else "v2" for u in USERS]
        assert {"v1", "v2"} == set(expected)
        routed = ("v2", "v1", "v1", 30.0, 2)
        assert await one.status() == routed and await one.versions() == expected

        async def two_follows() -> bool:
            return await two.status() == routed and await two.versions() == expected

        await eventually(two_follows, 1.0)  # the other process, within a second

        # a change written by the second process reaches the first
        await two.admin.SetSplit(recommender_pb2.SetSplitRequest(version="v1", percent=60), timeout=60)
        expected = ["v1" if in_candidate(u, 60) else "v2" for u in USERS]
        routed = ("v2", "v1", "v1", 60.0, 3)

        async def one_follows() -> bool:
            return await one.status() == routed and await one.versions() == expected

        await eventually(one_follows, 1.0)

        await two.close(signal.SIGKILL)
        assert two.process is not None and two.process.returncode == -signal.SIGKILL
        two = Process(stack)
        await two.start()  # SERVING only once the record in force is applied
        assert await two.status() == routed and await two.versions() == expected
        assert two.lines is not None
        assert re.search(r"routing revision 3 \(split by serving [^)]+\) in force", two.lines.text)
    finally:
        await asyncio.gather(one.close(), two.close(), return_exceptions=True)
    assert one.process is not None and one.process.returncode == 0
    assert not [line for line in (one.lines.text if one.lines else "").splitlines() if "Traceback" in line]


async def test_a_missing_routing_topic_is_created_compacted_with_one_partition(
    stack: Stack, kafka_bootstrap: str, unique: str
) -> None:
    topic = f"model-routing.created-{unique}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        async with stack.server(topic_routing=topic) as client:
            (described,) = admin.describe_topics([topic])
            configs = admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"cleanup.policy": None})]
            )["topic"][topic]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{client.running.admin_port}") as channel:
                status = await recommender_pb2_grpc.AdminStub(channel).Status(
                    recommender_pb2.StatusRequest(), timeout=10)
        assert len(described["partitions"]) == 1
        assert configs["cleanup.policy"]["value"] == "compact"
        assert (status.production, status.revision) == ("base", 0)
    finally:
        admin.delete_topics([topic])
        admin.close()
