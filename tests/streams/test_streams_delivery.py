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
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from kafka import KafkaProducer
from redis.cluster import RedisCluster
from streams_harness import StreamsWorker, TopicLog, committed_records

from bench.stack import delete_keys, delete_topics
from contracts.online import slot_of
from contracts.security import is_cluster_url, redis_client

from protos import events_pb2
from streams.history import decode_state
from streams.settings import DEFAULT_WEIGHTS, StreamsSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TYPES = [events_pb2.VIEW, events_pb2.CLICK, events_pb2.ADD_TO_CART, events_pb2.PURCHASE,
         events_pb2.RATING]
WEIGHT = {t: DEFAULT_WEIGHTS[events_pb2.EventType.Name(t).lower()] for t in TYPES}
ACCEPTED = "accepted"
HISTORY_LENGTH = StreamsSettings().history_length


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("STREAMREC_TEST_SEED", random.randrange(2**32)))
    print(f"STREAMREC_TEST_SEED={seed}")
    return random.Random(seed)


@dataclass
class Expected:
    """What one clean pass gives: the outcome of each record, and the state it leaves."""

    outcomes: dict[tuple[int, int], str] = field(default_factory=dict)  # (partition, offset)
    accepted: dict[str, list[events_pb2.Event]] = field(default_factory=dict)  # by user


@dataclass
class Deployment:
    """Topics, consumer group and Redis prefix shared by the workers of one test."""

    kafka: str
    redis_url: str
    suffix: str
    workdir: Path

    def worker(self, name: str) -> StreamsWorker:
        workdir = self.workdir / name
        workdir.mkdir(exist_ok=True)
        worker = StreamsWorker(kafka=self.kafka, redis_url=self.redis_url, suffix=self.suffix,
                               workdir=workdir)
        if is_cluster_url(self.redis_url):  # the social graph needs a single Redis
            worker.env["STREAMREC_STREAMS_RELATIONS_ENABLED"] = "false"
        return worker

    def redis(self) -> redis.Redis:
        return redis_client(self.redis_url, None)


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


def publish_catalog(worker: StreamsWorker, producer: KafkaProducer, n: int) -> list[str]:
    """`n` items, waiting until the worker has embedded them all."""
    items = [f"item-{k}" for k in range(n)]
    for k, item_id in enumerate(items):
        item = events_pb2.Item(item_id=item_id, title=f"Film number {k}", categories=["Drama"])
        producer.send(worker.topics["items"], key=item_id.encode(), value=item.SerializeToString())
    producer.flush()
    vectors = TopicLog(worker.env["STREAMREC_STREAMS_KAFKA_BOOTSTRAP"], worker.topics["item_vectors"])
    try:
        vectors.wait_for(
            lambda records: True if len({r.key for r in records}) >= n else None, worker,
            what=f"{n} item vectors",
        )
    finally:
        vectors.close()
    return items


class Events:
    """Random events of a few hundred users, with duplicates and bad records mixed in,
    and the outcome a clean pass gives each."""

    def __init__(self, rng: random.Random, users: int, items: list[str]) -> None:
        self._rng = rng
        self._users = [f"user-{k}" for k in range(users)]
        self._items = items
        self._sent: dict[str, list[events_pb2.Event]] = defaultdict(list)
        self._count = 0
        self._now = time.time_ns() // 1_000_000

    def next(self) -> tuple[bytes, bytes, str]:
        """(key, value, expected outcome) of the next record."""
        rng, self._count = self._rng, self._count + 1
        user = rng.choice(self._users)
        roll = rng.random()
        if roll < 0.03 and self._sent[user]:
            return user.encode(), rng.choice(self._sent[user]).SerializeToString(), "duplicate"
        if roll < 0.05:
            return user.encode(), b"\xff\x00 not protobuf", "undecodable"
        event = events_pb2.Event(
            event_id=f"ev-{self._count}-{rng.randrange(10**9)}", user_id=user,
            item_id=rng.choice(self._items), type=rng.choice(TYPES),
            # Distinct times, out of order within a user: history is kept by event time.
            # Within six days: older than the dedupe window (7 days) would be too_old.
            timestamp_ms=self._now - rng.randrange(5 * 10**8) // 1000 * 1000 - self._count,
        )
        if roll < 0.07:
            event.item_id = f"unknown-{self._count}"
            return user.encode(), event.SerializeToString(), "unknown_item"
        self._sent[user].append(event)
        return user.encode(), event.SerializeToString(), ACCEPTED


def produce(producer: KafkaProducer, topic: str, events: Events, n: int, expected: Expected,
            *, per_second: float | None = None) -> None:
    """Send `n` records (at most `per_second`) and note each one's expected outcome."""
    pending = []
    started = time.monotonic()
    for k in range(n):
        key, value, outcome = events.next()
        pending.append((producer.send(topic, key=key, value=value), value, outcome))
        if per_second is not None:
            time.sleep(max(0.0, started + k / per_second - time.monotonic()))
    producer.flush()
    for future, value, outcome in pending:
        metadata = future.get(30)
        expected.outcomes[(metadata.partition, metadata.offset)] = outcome
        if outcome == ACCEPTED:
            event = events_pb2.Event.FromString(value)
            expected.accepted.setdefault(event.user_id, []).append(event)


def applied_records(client: redis.Redis, worker: StreamsWorker) -> int:
    """Records below the applied offsets in Redis: how far the workers have got."""
    group = worker.env["STREAMREC_STREAMS_APP_ID"]
    if isinstance(client, RedisCluster):  # the popular set's slot sees every record
        offsets = client.hgetall(worker.keys.fence(group, slot_of(worker.keys.popular())))
    else:
        offsets = client.hgetall(worker.keys.applied(group))
    return sum(int(offset) + 1 for offset in offsets.values())


def wait_for_progress(client: redis.Redis, worker: StreamsWorker, records: int,
                      timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while applied_records(client, worker) < records:
        worker.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {records} records applied:\n{worker.log_tail()}")
        time.sleep(0.005)


def outcomes(worker: StreamsWorker, logs: dict[str, TopicLog]) -> Counter[tuple[int, int, str]]:
    """(partition, offset, outcome) of every committed output about a record of events."""
    found: Counter[tuple[int, int, str]] = Counter()
    for record in logs["enriched"].records:
        enriched = events_pb2.EnrichedEvent.FromString(record.value)
        found[(enriched.source_partition, enriched.source_offset, ACCEPTED)] += 1
    for record in logs["dlq"].records:
        letter = events_pb2.DeadLetter.FromString(record.value)
        if letter.origin_topic == worker.topics["events"]:
            found[(letter.origin_partition, letter.origin_offset, letter.reason)] += 1
    return found


def wait_for_all_outcomes(worker: StreamsWorker, logs: dict[str, TopicLog],
                          expected: Expected, timeout_s: float = 300.0) -> Counter:
    """Wait until every record has an outcome, then a little longer for extra ones."""
    deadline = time.monotonic() + timeout_s
    while True:
        for log in logs.values():
            log.poll()
        found = outcomes(worker, logs)
        if sum(found.values()) >= len(expected.outcomes):
            break
        worker.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{sum(found.values())} of {len(expected.outcomes)} outcomes "
                                 f"after {timeout_s} s:\n{worker.log_tail()}")
    time.sleep(2.0)  # many commit intervals: a repeated output would be committed by now
    for log in logs.values():
        log.poll()
    return outcomes(worker, logs)


def table_states(worker: StreamsWorker) -> dict[str, bytes]:
    """User states as their changelog has them: the newest committed value of each key."""
    topic = f"{worker.env['STREAMREC_STREAMS_APP_ID']}-users-changelog"
    records = committed_records(worker.env["STREAMREC_STREAMS_KAFKA_BOOTSTRAP"], topic)
    return {key.decode(): value for key, value in records if value is not None}


def scores(client: redis.Redis, key: str) -> dict[str, float]:
    pairs: list[tuple[bytes, float]] = client.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
    return {member.decode(): score for member, score in pairs}


def check_exactly_once(worker: StreamsWorker, logs: dict[str, TopicLog], client: redis.Redis,
                       expected: Expected) -> None:
    found = wait_for_all_outcomes(worker, logs, expected)
    repeated = {k: n for k, n in found.items() if n > 1}
    assert not repeated, f"records with repeated outputs: {sorted(repeated)[:10]}"
    got = {(p, o): outcome for p, o, outcome in found}
    assert len(got) == len(found), "a record with two different outcomes"
    assert got == expected.outcomes
    event_ids = Counter(events_pb2.EnrichedEvent.FromString(r.value).event.event_id
                        for r in logs["enriched"].records)
    assert max(event_ids.values()) == 1

    # Redis: popularity, seen items and user vectors, as one pass over the accepted events.
    popular: dict[str, float] = defaultdict(float)
    for events in expected.accepted.values():
        for event in events:
            popular[event.item_id] += WEIGHT[event.type]
    keys = worker.keys
    assert scores(client, keys.popular()) == pytest.approx(dict(popular))
    states = table_states(worker)
    for user, events in expected.accepted.items():
        seen: dict[str, int] = {}
        for event in events:
            seen[event.item_id] = max(seen.get(event.item_id, 0), event.timestamp_ms)
        assert scores(client, keys.seen(user)) == seen
        newest = max(event.timestamp_ms for event in events)
        assert int(client.hget(keys.user_vector(user), "ts")) == newest  # type: ignore[arg-type]
        # User states: each accepted event folded in once, the newest kept by event time.
        state = decode_state(states[user])
        by_time = sorted(events, key=lambda e: e.timestamp_ms)[-HISTORY_LENGTH:]
        assert [(i.item_id, i.event_type, i.timestamp_ms) for i in state.history] == [
            (e.item_id, e.type, e.timestamp_ms) for e in by_time
        ]
        assert sorted(event_id for event_id, _ in state.accepted) == sorted(
            e.event_id for e in events
        )


def open_logs(worker: StreamsWorker) -> dict[str, TopicLog]:
    kafka = worker.env["STREAMREC_STREAMS_KAFKA_BOOTSTRAP"]
    return {name: TopicLog(kafka, worker.topics[name]) for name in ("enriched", "dlq")}


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
