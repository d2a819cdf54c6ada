"""Exactly-once checks shared by the delivery tests: a deployment of workers sharing topics,
group and Redis prefix, random events with the outcome a clean pass gives each, and the
check that every record has exactly one outcome and Redis and the user states hold one
clean pass."""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest
import redis
from kafka import KafkaProducer
from redis.cluster import RedisCluster
from streams_harness import StreamsWorker, TopicLog, committed_records

from contracts.online import slot_of
from contracts.security import redis_client
from protos import events_pb2
from streams.history import decode_state
from streams.settings import DEFAULT_WEIGHTS, StreamsSettings

TYPES = [events_pb2.VIEW, events_pb2.CLICK, events_pb2.ADD_TO_CART, events_pb2.PURCHASE,
         events_pb2.RATING]
WEIGHT = {t: DEFAULT_WEIGHTS[events_pb2.EventType.Name(t).lower()] for t in TYPES}
ACCEPTED = "accepted"


def weight(event: events_pb2.Event) -> float:
    """What an accepted event adds to its item's popularity (a rating with a positive
    value weighs the rating weight times the value)."""
    scale = event.value if event.type == events_pb2.RATING and event.value > 0 else 1.0
    return WEIGHT[event.type] * scale


class Source(Protocol):
    def next(self) -> tuple[bytes, bytes, str]:
        """(key, value, expected outcome) of the next record."""
        ...
HISTORY_LENGTH = StreamsSettings().history_length
DEDUPE_WINDOW = StreamsSettings().dedupe_window

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
        return worker

    def redis(self) -> redis.Redis:
        return redis_client(self.redis_url, None)


def publish_catalog(worker: StreamsWorker, producer: KafkaProducer, n: int) -> list[str]:
    """`n` items, waiting until the worker has embedded them all."""
    items = [f"item-{k}" for k in range(n)]
    for k, item_id in enumerate(items):
        item = events_pb2.Item(item_id=item_id, title=f"Film number {k}", categories=["Drama"])
        producer.send(worker.topics["items"], key=item_id.encode(), value=item.SerializeToString())
    producer.flush()
    wait_for_vectors(worker, n)
    return items


def wait_for_vectors(worker: StreamsWorker, n: int, timeout_s: float = 60.0) -> None:
    """Until `n` distinct items have a vector on the worker's item-vectors topic."""
    vectors = TopicLog(worker.env["STREAMREC_STREAMS_KAFKA_BOOTSTRAP"], worker.topics["item_vectors"])
    try:
        vectors.wait_for(
            lambda records: True if len({r.key for r in records}) >= n else None, worker,
            what=f"{n} item vectors", timeout_s=timeout_s,
        )
    finally:
        vectors.close()


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


def produce(producer: KafkaProducer, topic: str, events: Source, n: int, expected: Expected,
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
            popular[event.item_id] += weight(event)
    keys = worker.keys
    assert scores(client, keys.popular()) == pytest.approx(dict(popular))
    states = table_states(worker)
    for user, events in expected.accepted.items():
        seen: dict[str, int] = {}
        for event in events:
            seen[event.item_id] = max(seen.get(event.item_id, 0), event.timestamp_ms)
        # `seen` is capped at the history length: the newest items stay
        newest_items = sorted(seen, key=lambda item: seen[item])[-HISTORY_LENGTH:]
        assert scores(client, keys.seen(user)) == {item: seen[item] for item in newest_items}
        newest = max(event.timestamp_ms for event in events)
        assert int(client.hget(keys.user_vector(user), "ts")) == newest  # type: ignore[arg-type]
        # User states: each accepted event folded in once, the newest kept by event time.
        state = decode_state(states[user])
        by_time = sorted(events, key=lambda e: e.timestamp_ms)[-HISTORY_LENGTH:]
        assert [(i.item_id, i.event_type, i.timestamp_ms) for i in state.history] == [
            (e.item_id, e.type, e.timestamp_ms) for e in by_time
        ]
        # the newest `dedupe_window` ids, in the order they were accepted (offset order)
        assert sorted(event_id for event_id, _ in state.accepted) == sorted(
            e.event_id for e in events[-DEDUPE_WINDOW:]
        )


def open_logs(worker: StreamsWorker) -> dict[str, TopicLog]:
    kafka = worker.env["STREAMREC_STREAMS_KAFKA_BOOTSTRAP"]
    return {name: TopicLog(kafka, worker.topics[name]) for name in ("enriched", "dlq")}
