"""Shared fixtures: the local Kafka and Redis started by `bash scripts/infra.sh up`.

Integration tests fail (never skip) when a service is unreachable; CI starts infra first.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, cast

import pytest
import redis
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError

if TYPE_CHECKING:
    from redis.cluster import RedisCluster

START_HINT = "run `bash scripts/infra.sh up` (or `make infra-up`)"
CLUSTER_HINT = "run `bash scripts/infra.sh redis-cluster-up`"
REDIS_CLUSTER = ",".join(f"127.0.0.1:{port}" for port in range(7000, 7006))
KAFKA_CLUSTER_HINT = "run `bash scripts/infra.sh kafka-cluster-up`"
KAFKA_CLUSTER = ",".join(f"127.0.0.1:{port}" for port in (19092, 19094, 19096))
TOPIC_READY_TIMEOUT_S = 30.0

CreateTopics = Callable[..., list[str]]
DescribeTopics = Callable[[list[str]], dict[str, tuple[int, dict[str, str]]]]


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap servers of the test broker (env STREAMREC_TEST_KAFKA)."""
    bootstrap = os.environ.get("STREAMREC_TEST_KAFKA", "127.0.0.1:9092")
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        try:
            admin.describe_cluster()
        finally:
            admin.close()
    except (KafkaError, OSError) as exc:
        pytest.fail(f"Kafka is not reachable at {bootstrap} ({exc!r}); {START_HINT}", pytrace=False)
    return bootstrap


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the test Redis (env STREAMREC_TEST_REDIS)."""
    url = os.environ.get("STREAMREC_TEST_REDIS", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {url} ({exc!r}); {START_HINT}", pytrace=False)
    finally:
        client.close()
    return url


@pytest.fixture(scope="session")
def redis_cluster_url() -> str:
    """URL of the test Redis Cluster (env STREAMREC_TEST_REDIS_CLUSTER); the tests that
    need it (marked ``cluster``) skip, saying how to start it, when it is not up."""
    from contracts.security import redis_client

    url = os.environ.get("STREAMREC_TEST_REDIS_CLUSTER", f"redis+cluster://{REDIS_CLUSTER}")
    try:
        client = redis_client(url, None, socket_connect_timeout=2)
    except redis.RedisError as exc:
        pytest.skip(f"no Redis Cluster at {url} ({exc!r}); {CLUSTER_HINT}")
    try:
        state = cast("RedisCluster", client).cluster_info().get("cluster_state")
    except redis.RedisError as exc:
        pytest.skip(f"no Redis Cluster at {url} ({exc!r}); {CLUSTER_HINT}")
    finally:
        client.close()
    if state != "ok":
        pytest.skip(f"the Redis Cluster at {url} is in cluster_state:{state}; {CLUSTER_HINT}")
    return url


@pytest.fixture(scope="session")
def kafka_cluster_bootstrap() -> str:
    """Bootstrap servers of the 3-node test Kafka cluster (env STREAMREC_TEST_KAFKA_CLUSTER);
    the tests that need it (marked ``cluster``) skip, saying how to start it, unless all
    three brokers answer."""
    bootstrap = os.environ.get("STREAMREC_TEST_KAFKA_CLUSTER", KAFKA_CLUSTER)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
        try:
            brokers = admin.describe_cluster()["brokers"]
        finally:
            admin.close()
    except (KafkaError, OSError) as exc:
        pytest.skip(f"no Kafka cluster at {bootstrap} ({exc!r}); {KAFKA_CLUSTER_HINT}")
    if len(brokers) < 3:
        pytest.skip(f"the Kafka cluster at {bootstrap} has {len(brokers)} live brokers, not 3; "
                    f"{KAFKA_CLUSTER_HINT}")
    return bootstrap


@pytest.fixture(params=["single", pytest.param("cluster", marks=pytest.mark.cluster)])
def online_redis_url(request: pytest.FixtureRequest) -> str:
    """The URL of the single test Redis, then of the test Redis Cluster (marked
    ``cluster``): online-state tests run against both."""
    name = "redis_url" if request.param == "single" else "redis_cluster_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def unique() -> str:
    """A fresh short suffix for topic names, consumer groups and Redis prefixes."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def create_topics(kafka_bootstrap: str) -> Iterator[CreateTopics]:
    """Create topics and wait until every partition has a leader; deleted at teardown.

    Call as ``create_topics(["a", "b"], partitions=4, config={"cleanup.policy": "compact"})``.
    """
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    created: list[str] = []

    def create(
        names: list[str], partitions: int = 4, config: dict[str, str] | None = None
    ) -> list[str]:
        admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1, topic_configs=config or {})
             for n in names]
        )
        created.extend(names)
        _wait_for_leaders(admin, names, partitions)
        return list(names)

    yield create
    if created:
        try:
            admin.delete_topics(created)
        except KafkaError:
            pass
    admin.close()


@pytest.fixture
def owned_topics(kafka_bootstrap: str, unique: str) -> Iterator[str]:
    """The `unique` suffix, for topics the code under test creates itself: every topic
    whose name holds it is deleted at teardown."""
    yield unique
    from bench.stack import delete_topics

    delete_topics(kafka_bootstrap, unique)


@pytest.fixture
def describe_topics(kafka_bootstrap: str) -> Iterator[DescribeTopics]:
    """``describe(names) -> {name: (partitions, {config: value})}`` of existing topics."""
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)

    def describe(names: list[str]) -> dict[str, tuple[int, dict[str, str]]]:
        existing = set(admin.list_topics())
        names = [name for name in names if name in existing]
        if not names:
            return {}
        partitions = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)}
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )["topic"]
        configs = {name: {key: entry["value"] for key, entry in described[name].items()}
                   for name in names}
        return {name: (partitions[name], configs.get(name, {})) for name in names}

    yield describe
    admin.close()


def _wait_for_leaders(admin: KafkaAdminClient, names: list[str], partitions: int) -> None:
    deadline = time.monotonic() + TOPIC_READY_TIMEOUT_S
    while True:
        try:
            described = admin.describe_topics(names)
        except KafkaError:
            described = []
        ready = [
            t for t in described
            if t["error_code"] == 0
            and len(t["partitions"]) == partitions
            and all(p["leader_id"] >= 0 for p in t["partitions"])
        ]
        if len(ready) == len(names):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {names} not ready after {TOPIC_READY_TIMEOUT_S}s")
        time.sleep(0.1)
