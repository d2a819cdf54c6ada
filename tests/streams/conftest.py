"""Fixtures of the streams tests: the real item encoder, and a running worker per module
(on `kafka_bootstrap` and `redis_url` from tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from kafka import KafkaProducer
from redis.asyncio import Redis
from streams_harness import Running, StreamsWorker, TopicLog

from bench.stack import delete_keys, delete_topics
from contracts.encoder import ItemEncoder, pretrained_model_dir
from contracts.online import RedisKeys
from contracts.security import async_redis_client, redis_client


@pytest.fixture(scope="session")
def encoder() -> ItemEncoder:
    return ItemEncoder.load(pretrained_model_dir(), device="cpu", bf16="off", max_length=64)


@pytest.fixture(scope="module")
def running(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Running]:
    """One worker per test module (model load and group join take seconds), with the
    module's ``WORKER_ENV`` settings if it has any, on the single Redis or, where the
    module says ``REDIS = "cluster"``, on the Redis Cluster; its topics and Redis keys are
    deleted afterwards."""
    kind = getattr(request.module, "REDIS", "single")
    redis_url = str(request.getfixturevalue("redis_url" if kind == "single"
                                            else "redis_cluster_url"))
    suffix = "t" + uuid.uuid4().hex[:10]
    worker = StreamsWorker(
        kafka=kafka_bootstrap, redis_url=redis_url, suffix=suffix,
        workdir=tmp_path_factory.mktemp(f"streams-{suffix}"),
    )
    worker.env.update(getattr(request.module, "WORKER_ENV", {}))
    client = redis_client(redis_url, None)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=0)
    logs: dict[str, TopicLog] = {}
    try:
        startup_s = worker.start()
        logs = {name: TopicLog(kafka_bootstrap, topic) for name, topic in worker.topics.items()}
        yield Running(worker, producer, logs, client, startup_s)
    finally:
        exit_code = worker.stop()
        for topic_log in logs.values():
            topic_log.close()
        producer.close()
        delete_keys(client, worker.redis_prefix)
        client.close()
        delete_topics(kafka_bootstrap, suffix)
    assert exit_code == 0, f"worker exit code {exit_code}:\n{worker.log_tail()}"


@pytest.fixture(name="redis")
async def scratch_redis(online_redis_url: str, unique: str
                        ) -> AsyncIterator[tuple[Redis, RedisKeys]]:
    """An asyncio client (of the single Redis, then of the cluster) and the keys under a
    fresh prefix, whose keys are deleted after."""
    client = async_redis_client(online_redis_url, None)
    keys = RedisKeys(f"test-{unique}:")
    yield client, keys
    names = [name async for name in client.scan_iter(match=f"{keys.prefix}*", count=1000)]
    for name in names:  # one by one: a cluster's keys lie in many slots
        await client.delete(name)
    await client.aclose()
