"""Fixtures of the serving tests: fresh topics and Redis prefix on the local Kafka and
Redis (shared fixtures of tests/conftest.py), and an in-process server on port 0.

``online_stack`` is the same stack with the online state on the single test Redis or on
a Redis Cluster (``bash scripts/infra.sh redis-cluster-up``; its URL from
STREAMREC_TEST_REDIS_CLUSTER_URL): its cluster variant is marked ``cluster`` and skipped,
saying why, when no cluster answers."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis
from redis.exceptions import RedisClusterException, RedisError

from contracts.online import RedisKeys
from contracts.security import async_redis_client, redis_client
from protos import events_pb2, recommender_pb2_grpc
from serving.server import Running, running
from serving.settings import ServingSettings

DIM = 8
PARTITIONS = 2
CLUSTER_URL = os.environ.get("STREAMREC_TEST_REDIS_CLUSTER_URL",
                             "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002")


@pytest.fixture(scope="session")
def redis_cluster_url() -> str:
    """URL of the test Redis Cluster (env STREAMREC_TEST_REDIS_CLUSTER_URL); the test is
    skipped when no cluster answers there."""
    try:  # redis-py's cluster client connects as it is made
        client = redis_client(CLUSTER_URL, None, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except (RedisError, RedisClusterException, OSError) as error:
        pytest.skip(f"no Redis Cluster answers at {CLUSTER_URL} ({error}); start one with "
                    "`bash scripts/infra.sh redis-cluster-up`")
    return CLUSTER_URL


@pytest.fixture(params=["single", pytest.param("cluster", marks=pytest.mark.cluster)])
def online_url(request: pytest.FixtureRequest) -> str:
    """The URL of the online state: the single test Redis, then the Redis Cluster."""
    return str(request.getfixturevalue("redis_url" if request.param == "single"
                                       else "redis_cluster_url"))


async def delete_prefixed(redis: Redis, prefix: str) -> None:
    """Every key under `prefix` deleted (on a cluster: scanned on every master)."""
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await redis.delete(*keys)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    """Poll `check` until it is true; fail after `timeout_s` (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.05)


@dataclass
class Client:
    """A channel to a running in-process server."""

    running: Running
    channel: grpc.aio.Channel
    stub: recommender_pb2_grpc.RecommenderStub
    health: health_pb2_grpc.HealthStub


@dataclass
class Stack:
    """Fresh topics and Redis prefix on the shared broker and Redis, and ways to fill them."""

    kafka: str
    redis_url: str
    suffix: str
    producer: AIOKafkaProducer
    redis: Redis
    artifact_dir: Path
    topics: dict[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return f"srtest:{self.suffix}:"

    @property
    def keys(self) -> RedisKeys:
        return RedisKeys(self.prefix)

    def settings(self, **overrides: Any) -> ServingSettings:
        values: dict[str, Any] = dict(
            kafka_bootstrap=self.kafka,
            redis_url=self.redis_url,
            redis_prefix=self.prefix,
            topic_events=self.topics["events"],
            topic_items=self.topics["items"],
            topic_item_vectors=self.topics["item_vectors"],
            topic_routing=self.topics["routing"],
            topic_recommendations=self.topics["recommendations"],
            topic_enriched=self.topics["enriched"],
            topic_relations=self.topics["relations"],
            topic_deletions=self.topics["deletions"],
            admin_port=0,
            artifact_dir=self.artifact_dir,
            host="127.0.0.1",
            port=0,
            dim=DIM,
            grace_s=1.0,
            max_k=50,
            client_id=f"serving-test-{self.suffix}",
        )
        values.update(overrides)
        return ServingSettings(**values)

    async def publish_vectors(
        self, vectors: Mapping[str, np.ndarray], version: str = "base", partition: int | None = None
    ) -> None:
        for item_id, vector in vectors.items():
            message = events_pb2.ItemVector(
                item_id=item_id, model_version=version, vector=vector.tolist(),
                updated_at_ms=int(time.time() * 1000),
            )
            await self.producer.send(self.topics["item_vectors"], key=item_id.encode(),
                                     value=message.SerializeToString(), partition=partition)
        await self.producer.flush()

    async def publish_items(self, items: list[events_pb2.Item]) -> None:
        for item in items:
            await self.producer.send(self.topics["items"], key=item.item_id.encode(),
                                     value=item.SerializeToString())
        await self.producer.flush()

    async def set_user(
        self, user_id: str, vector: np.ndarray | None, version: str = "base",
        seen: list[str] | None = None,
    ) -> None:
        """Write a user's state the way the streams worker does (contracts §3)."""
        now = int(time.time() * 1000)
        if vector is not None:
            await self.redis.hset(self.keys.user_vector(user_id), mapping={
                "vec": vector.astype("<f4").tobytes(), "version": version, "ts": now, "at": now,
            })
        if seen:
            await self.redis.zadd(self.keys.seen(user_id),
                                  {item_id: now - i for i, item_id in enumerate(seen)})

    async def set_popular(self, scores: Mapping[str, float]) -> None:
        await self.redis.zadd(self.keys.popular(), dict(scores))

    @asynccontextmanager
    async def server(self, **overrides: Any) -> AsyncIterator[Client]:
        """A real server on port 0, SERVING (its feeds caught up) before it is handed out."""
        async with running(self.settings(**overrides)) as run:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{run.port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)

                async def serving() -> bool:
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
                    return reply.status == health_pb2.HealthCheckResponse.SERVING

                await eventually(serving)
                yield Client(run, channel, recommender_pb2_grpc.RecommenderStub(channel), health)


@pytest.fixture
async def stack(
    kafka_bootstrap: str, redis_url: str, unique: str, create_topics: Any, tmp_path: Path,
    owned_topics: str,
) -> AsyncIterator[Stack]:
    """Fresh topics (deleted by ``create_topics``) and Redis prefix (keys deleted here)."""
    async with _stack(kafka_bootstrap, redis_url, unique, create_topics, tmp_path) as made:
        yield made


@pytest.fixture
async def online_stack(
    kafka_bootstrap: str, online_url: str, unique: str, create_topics: Any, tmp_path: Path,
    owned_topics: str,
) -> AsyncIterator[Stack]:
    """:func:`stack` with its online state on the single Redis, then on the cluster."""
    async with _stack(kafka_bootstrap, online_url, unique, create_topics, tmp_path) as made:
        yield made


@asynccontextmanager
async def _stack(kafka_bootstrap: str, redis_url: str, unique: str, create_topics: Any,
                 tmp_path: Path) -> AsyncIterator[Stack]:
    topics = {
        "events": f"events.serving-{unique}",
        "items": f"items.serving-{unique}",
        "item_vectors": f"item-vectors.serving-{unique}",
        "routing": f"model-routing.serving-{unique}",
        "recommendations": f"recommendations.serving-{unique}",
        "enriched": f"events.enriched.serving-{unique}",
        "relations": f"relations.serving-{unique}",  # created by the server (owned_topics)
        "deletions": f"deletions.serving-{unique}",  # created by the server (owned_topics)
    }
    create_topics([topics["events"], topics["recommendations"], topics["enriched"]],
                  partitions=PARTITIONS)
    create_topics([topics["routing"]], partitions=1, config={"cleanup.policy": "compact"})
    create_topics([topics["items"], topics["item_vectors"]], partitions=PARTITIONS,
                  config={"cleanup.policy": "compact"})
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    redis = async_redis_client(redis_url, None)
    stack = Stack(kafka_bootstrap, redis_url, unique, producer, redis, tmp_path / "artifacts", topics)
    try:
        yield stack
    finally:
        await producer.stop()
        await delete_prefixed(redis, stack.prefix)
        await redis.aclose()
