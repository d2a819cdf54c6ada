"""Exactly once through crashes and rebalances, against the real Kafka and Redis.

A worker is SIGKILLed at a random moment while it works through a backlog of thousands
of events on several partitions, then started again; a second worker joins mid-stream
and the first leaves; a second worker joins and the first is SIGKILLed during the
rebalance. Afterwards every record of ``events`` has exactly one outcome in
``events.enriched`` or ``events.dlq`` (read committed), and Redis and the user states
hold what one clean pass over the records gives. ``STREAMREC_TEST_SEED`` replays a run.
The crash mid-replay runs on a Redis Cluster too (marked ``cluster``): Redis effects fenced
per slot instead of by one transaction.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from delivery_harness import (
    Deployment,
    Events,
    Expected,
    check_exactly_once,
    open_logs,
    outcomes,
    produce,
    publish_catalog,
    wait_for_progress,
)
from kafka import KafkaProducer
from streams_harness import StreamsWorker, TopicLog

from bench.stack import delete_keys, delete_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("STREAMREC_TEST_SEED", random.randrange(2**32)))
    print(f"STREAMREC_TEST_SEED={seed}")
    return random.Random(seed)


@pytest.fixture
def deployment(kafka_bootstrap: str, request: pytest.FixtureRequest,
               tmp_path: Path) -> Iterator[Deployment]:
    """On the single Redis, or on the Redis Cluster when parametrized with "cluster"."""
    kind = getattr(request, "param", "single")
    url = str(request.getfixturevalue("redis_url" if kind == "single" else "redis_cluster_url"))
    suffix = "d" + uuid.uuid4().hex[:10]
    found = Deployment(kafka_bootstrap, url, suffix, tmp_path)
    yield found
    client = found.redis()
    delete_keys(client, f"test-{suffix}:")
    client.close()
    delete_topics(kafka_bootstrap, suffix)


@pytest.mark.parametrize(
    "deployment", ["single", pytest.param("cluster", marks=pytest.mark.cluster)], indirect=True)
def test_sigkill_mid_replay_loses_nothing_and_applies_nothing_twice(
    deployment: Deployment, rng: random.Random,
) -> None:
    records = 20_000
    worker = deployment.worker("w1")
    client = deployment.redis()
    producer = KafkaProducer(bootstrap_servers=deployment.kafka, acks="all", linger_ms=5)
    logs: dict[str, TopicLog] = {}
    try:
        worker.start()
        items = publish_catalog(worker, producer, 40)
        assert worker.stop() == 0
        # A backlog on every partition, worked through from the start after the relaunch.
        expected = Expected()
        produce(producer, worker.topics["events"], Events(rng, 800, items), records, expected)
        assert len({partition for partition, _ in expected.outcomes}) == 4
        worker.start()
        wait_for_progress(client, worker, rng.randrange(records // 10, records * 7 // 10))
        worker.kill()
        logs = open_logs(worker)
        for log in logs.values():
            log.poll()
        committed = sum(outcomes(worker, logs).values())
        print(f"killed with {committed} of {records} outcomes committed")
        assert committed < records  # the kill left work to do

        worker.start()
        check_exactly_once(worker, logs, client, expected)
        assert worker.stop() == 0
    finally:
        worker.kill()
        for log in logs.values():
            log.close()
        producer.close()
        client.close()


def live_events(first: StreamsWorker, producer: KafkaProducer, client: redis.Redis,
                rng: random.Random, expected: Expected, records: int) -> threading.Thread:
    """Start `first` with a catalog, send `records` events at 300/s from a thread, and
    return it (still sending) once the worker has applied 500 of them."""
    first.start()
    items = publish_catalog(first, producer, 40)
    sending = threading.Thread(
        target=produce,
        args=(producer, first.topics["events"], Events(rng, 400, items), records, expected),
        kwargs={"per_second": 300.0},
    )
    sending.start()
    wait_for_progress(client, first, 500)
    return sending


@dataclass
class Pair:
    """Two workers of one deployment, the producer and Redis client the test uses, and the
    logs it opens; all closed or killed afterwards."""

    first: StreamsWorker
    second: StreamsWorker
    producer: KafkaProducer
    client: redis.Redis
    logs: dict[str, TopicLog] = field(default_factory=dict)


@pytest.fixture
def pair(deployment: Deployment) -> Iterator[Pair]:
    workers = Pair(
        deployment.worker("w1"), deployment.worker("w2"),
        KafkaProducer(bootstrap_servers=deployment.kafka, acks="all", linger_ms=5),
        deployment.redis(),
    )
    try:
        yield workers
    finally:
        workers.first.kill()
        workers.second.kill()
        for log in workers.logs.values():
            log.close()
        workers.producer.close()
        workers.client.close()


def test_a_second_worker_joins_and_the_first_leaves_mid_stream(
    pair: Pair, rng: random.Random,
) -> None:
    first, second, expected = pair.first, pair.second, Expected()
    sending = live_events(first, pair.producer, pair.client, rng, expected, 12_000)
    second.start()  # ready once it has its share of the partitions
    time.sleep(3.0)  # both work, while events keep coming
    assert sending.is_alive(), "the events ran out before the first worker left"
    assert first.stop() == 0  # leaves: the second takes every partition
    sending.join()
    pair.logs = open_logs(second)
    check_exactly_once(second, pair.logs, pair.client, expected)
    assert "Setting newly assigned partitions" in second.log_since_start()
    assert second.stop() == 0


def test_a_worker_killed_while_a_second_one_joins_loses_nothing(
    pair: Pair, rng: random.Random,
) -> None:
    """SIGKILL of the first worker at a random moment of the rebalance the second one's
    join starts, while events keep coming: the second ends up with every partition (after
    the dead one's session times out) and every record has exactly one outcome."""
    first, second, expected = pair.first, pair.second, Expected()
    sending = live_events(first, pair.producer, pair.client, rng, expected, 8_000)
    joining = threading.Thread(target=second.start)
    joining.start()
    # The second's first assignment of events partitions starts the rebalance in which
    # the first must commit and let go of some of its own.
    deadline = time.monotonic() + 120
    while not (second.log_path.exists() and "events partitions" in second.log_since_start()):
        assert time.monotonic() < deadline, f"the second never joined:\n{second.log_tail()}"
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 1.0))
    first.kill()
    joining.join()
    sending.join()
    pair.logs = open_logs(second)
    check_exactly_once(second, pair.logs, pair.client, expected)
    assert second.stop() == 0
