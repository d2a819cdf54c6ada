"""Exactly once on a replicated Kafka: a MovieLens-1M replay through two streams workers on
the 3-node KRaft cluster of ``scripts/infra.sh kafka-cluster-up`` (replication 3,
min.insync.replicas 2, every producer acks=all and idempotent). While events arrive, one
broker is SIGKILLed, then one of the workers; both come back. Every record of ``events``
then has exactly one outcome in ``events.enriched`` or ``events.dlq`` (read committed),
and Redis and the user states hold what one clean pass over the records gives.
``STREAMREC_TEST_SEED`` replays a run (which broker, when)."""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from delivery_harness import (
    ACCEPTED,
    Deployment,
    Expected,
    check_exactly_once,
    open_logs,
    outcomes,
    produce,
    wait_for_progress,
    wait_for_vectors,
)
from kafka import KafkaProducer
from streams_harness import TopicLog

from bench.stack import delete_keys, delete_topics
from ingest import movielens
from ingest.dataset import order_interactions, rebase_shift_ms
from ingest.messages import event_records, item_records

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.cluster]

INFRA = Path(__file__).resolve().parents[2] / "scripts" / "infra.sh"
RECORDS = 6_000  # the first 6,000 ratings: 51 users, 1,802 films, 1.9 days
RESENT = 0.02  # share of records that re-send an event already sent (dead-lettered)
REPLICATED = {
    "STREAMREC_STREAMS_TOPIC_REPLICATION": "3",
    "STREAMREC_STREAMS_TOPIC_MIN_INSYNC_REPLICAS": "2",
}


def infra(*args: str) -> None:
    subprocess.run(["bash", str(INFRA), *args], check=True, capture_output=True, timeout=180)


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("STREAMREC_TEST_SEED", random.randrange(2**32)))
    print(f"STREAMREC_TEST_SEED={seed}")
    return random.Random(seed)


class MovieLensReplay:
    """The first `n` ratings of MovieLens-1M in time order, as ``python -m ingest`` sends
    them (ids from the source rows, times moved to end a minute ago), with a share of
    re-sent ones mixed in; each with the outcome a clean pass gives it."""

    def __init__(self, n: int, rng: random.Random) -> None:
        dataset = movielens.load()
        rows = order_interactions(dataset.interactions).head(n).copy()
        # a user's ratings within one second get distinct milliseconds, in row order, so
        # a clean pass orders each history one way only
        rows["timestamp_ms"] += rows.groupby(["user_id", "timestamp_ms"]).cumcount()
        shift = rebase_shift_ms(rows["timestamp_ms"].to_numpy(), time.time_ns() // 10**6 - 60_000)
        self.name = dataset.name
        self.items: pd.DataFrame = dataset.items[dataset.items["item_id"].isin(set(rows["item_id"]))]
        self._records = list(event_records(dataset.name, rows, shift))
        self._rng = rng
        self._next = 0

    def next(self) -> tuple[bytes, bytes, str]:
        if self._next and self._rng.random() < RESENT:
            key, value = self._records[self._rng.randrange(self._next)]
            return key.encode(), value, "duplicate"
        key, value = self._records[self._next]
        self._next += 1
        return key.encode(), value, ACCEPTED


@pytest.fixture
def deployment(kafka_cluster_bootstrap: str, redis_url: str,
               tmp_path: Path) -> Iterator[Deployment]:
    suffix = "k" + uuid.uuid4().hex[:10]
    found = Deployment(kafka_cluster_bootstrap, redis_url, suffix, tmp_path)
    yield found
    client = found.redis()
    delete_keys(client, f"test-{suffix}:")
    client.close()
    delete_topics(kafka_cluster_bootstrap, suffix)


def test_a_broker_and_then_a_worker_killed_mid_replay_lose_nothing(
    deployment: Deployment, rng: random.Random,
) -> None:
    first, second = deployment.worker("w1"), deployment.worker("w2")
    for worker in (first, second):
        worker.env.update(REPLICATED)
    client = deployment.redis()
    producer = KafkaProducer(bootstrap_servers=deployment.kafka, acks="all",
                             enable_idempotence=True, linger_ms=5)
    victim = rng.choice([1, 2, 3])
    broker_down = False
    logs: dict[str, TopicLog] = {}
    try:
        first.start()
        second.start()
        replay = MovieLensReplay(RECORDS, rng)
        for key, value in item_records(replay.items, time.time_ns() // 10**6):
            producer.send(first.topics["items"], key=key.encode(), value=value)
        producer.flush()
        wait_for_vectors(first, len(replay.items), timeout_s=300.0)

        expected = Expected()
        sending = threading.Thread(
            target=produce, args=(producer, first.topics["events"], replay, RECORDS, expected),
            kwargs={"per_second": 300.0},
        )
        sending.start()
        wait_for_progress(client, first, rng.randrange(600, 1_500))
        infra("kafka-cluster-kill", str(victim))
        broker_down = True
        time.sleep(rng.uniform(1.0, 4.0))  # both workers go on with two brokers
        assert sending.is_alive(), "the replay ended before the crashes"
        first.kill()
        time.sleep(rng.uniform(0.0, 3.0))
        infra("kafka-cluster-start", str(victim))
        broker_down = False
        first.start()
        sending.join()
        assert len(expected.outcomes) == RECORDS

        logs = open_logs(second)
        check_exactly_once(second, logs, client, expected)
        found = outcomes(second, logs)
        print(f"broker {victim} and worker w1 killed; {sum(found.values())} outcomes, "
              f"{sum(1 for _, _, o in found if o == 'duplicate')} re-sent records dead-lettered")
        assert first.stop() == 0
        assert second.stop() == 0
    finally:
        first.kill()
        second.kill()
        if broker_down:
            infra("kafka-cluster-start", str(victim))
        for log in logs.values():
            log.close()
        producer.close()
        client.close()
