"""The relations reader exactly once through a crash, against the real Kafka and Redis.

A worker is SIGKILLed at a random moment while it works through a backlog of relation
records on every partition (edges added, re-added with other flags, removed; bad records
mixed in), then started again. Afterwards Redis holds the graph one clean pass gives,
the hot set agrees with the follower counts, and every bad record has exactly one dead
letter (read committed). ``STREAMREC_TEST_SEED`` replays a run.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from streams_harness import StreamsWorker, TopicLog, eventually

from bench.stack import delete_keys, delete_topics
from contracts.online import RedisKeys
from contracts.relations import KIND_NAMES, key_of
from contracts.social import EdgeFlags
from protos import events_pb2
from streams.graph import hot_bounds

pytestmark = [pytest.mark.integration, pytest.mark.slow]

THRESHOLD = 20
RECORDS = 12_000


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("STREAMREC_TEST_SEED", random.randrange(2**32)))
    print(f"STREAMREC_TEST_SEED={seed}")
    return random.Random(seed)


@pytest.fixture
def worker(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> Iterator[StreamsWorker]:
    suffix = "r" + uuid.uuid4().hex[:10]
    worker = StreamsWorker(kafka=kafka_bootstrap, redis_url=redis_url, suffix=suffix,
                           workdir=tmp_path)
    worker.env.update({
        "STREAMREC_STREAMS_FANOUT_THRESHOLD": str(THRESHOLD),
        # Small batches: the kill lands between many of them; commits a second apart, so
        # it lands with applied records not yet committed.
        "STREAMREC_STREAMS_EVENT_BATCH_SIZE": "100",
        "STREAMREC_STREAMS_COMMIT_INTERVAL_S": "1",
    })
    yield worker
    worker.kill()
    client = redis.Redis.from_url(redis_url)
    delete_keys(client, worker.redis_prefix)
    client.close()
    delete_topics(kafka_bootstrap, suffix)


class Backlog:
    """Random relation records among a few hundred users (one of them followed by many),
    and what a clean pass makes of them: each edge's last state, each bad record's reason."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.users = [f"u{k}" for k in range(300)]
        self.edges: dict[bytes, tuple[str, str, int, bool, bool]] = {}  # key -> last state

    def next(self) -> tuple[bytes, bytes | None, str | None]:
        """(key, value, dead-letter reason or None)."""
        rng = self.rng
        follower = rng.choice(self.users)
        followee = "star" if rng.random() < 0.3 else rng.choice(self.users)
        kind = rng.choice(list(KIND_NAMES))
        roll = rng.random()
        if roll < 0.02:
            return f"{follower}|{follower}|follow".encode(), events_pb2.Relation(
                follower_id=follower, followee_id=follower, kind=events_pb2.FOLLOW,
                timestamp_ms=time.time_ns() // 1_000_000).SerializeToString(), "self_relation"
        if roll < 0.04:
            return f"{follower}|x|follow".encode(), b"\xff\x00 not protobuf", "undecodable"
        if follower == followee:
            followee = "star" if follower != "star" else "u0"
        relation = events_pb2.Relation(
            follower_id=follower, followee_id=followee, kind=kind,  # type: ignore[arg-type]
            timestamp_ms=time.time_ns() // 1_000_000, share_name=rng.random() < 0.5)
        key = key_of(relation)
        if roll < 0.2 and key in self.edges:
            self.edges[key] = (follower, followee, kind, False, False)
            return key, None, None
        self.edges[key] = (follower, followee, kind, True, relation.share_name)
        return key, relation.SerializeToString(), None

    def graph(self) -> dict[tuple[str, str], int]:
        """(follower, followee) -> encoded EdgeFlags, edges left only."""
        flags: dict[tuple[str, str], EdgeFlags] = {}
        for follower, followee, kind, present, share in self.edges.values():
            pair = (follower, followee)
            current = flags.get(pair, EdgeFlags())
            flags[pair] = current.with_edge(kind, share_name=share) if present else \
                current.without_edge(kind)
        return {pair: f.encode() for pair, f in flags.items() if f.related}


def produce(worker: StreamsWorker, backlog: Backlog) -> dict[tuple[int, int], str]:
    """Send the backlog; the (partition, offset) and reason of each bad record."""
    producer = KafkaProducer(bootstrap_servers=worker.env["STREAMREC_STREAMS_KAFKA_BOOTSTRAP"],
                             acks="all", linger_ms=5)
    try:
        sent = []
        for _ in range(RECORDS):
            key, value, reason = backlog.next()
            sent.append((producer.send(worker.topics["relations"], key=key, value=value), reason))
        producer.flush()
        return {(m.partition, m.offset): reason for m, reason in
                ((future.get(30), reason) for future, reason in sent) if reason is not None}
    finally:
        producer.close()


def committed(worker: StreamsWorker) -> tuple[int, int]:
    """Records of relations below the group's committed offsets, and in the topic."""
    kafka = worker.env["STREAMREC_STREAMS_KAFKA_BOOTSTRAP"]
    group = f"{worker.env['STREAMREC_STREAMS_APP_ID']}-relations"
    # A consumer of the group that never subscribes: it reads the offsets, joins nothing.
    consumer = KafkaConsumer(bootstrap_servers=kafka, group_id=group, enable_auto_commit=False)
    try:
        topic = worker.topics["relations"]
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        ends = consumer.end_offsets(partitions)
        done = sum(consumer.committed(tp) or 0 for tp in partitions)
        return done, sum(ends.values())
    finally:
        consumer.close()


def applied(client: redis.Redis, worker: StreamsWorker) -> int:
    group = f"{worker.env['STREAMREC_STREAMS_APP_ID']}-relations"
    offsets = client.hgetall(worker.keys.applied(group))
    return sum(int(offset) + 1 for offset in offsets.values())  # type: ignore[union-attr]


def redis_graph(client: redis.Redis, keys: RedisKeys, users: list[str]) -> dict[tuple[str, str], int]:
    found = {}
    for user in [*users, "star"]:
        edges: dict[bytes, bytes] = client.hgetall(keys.following(user))  # type: ignore[assignment]
        for followee, raw in edges.items():
            found[(user, followee.decode())] = int(raw)
    return found


def test_sigkill_mid_stream_applies_every_edge_once_and_dead_letters_once(
    worker: StreamsWorker, rng: random.Random,
) -> None:
    client = redis.Redis.from_url(worker.env["STREAMREC_STREAMS_REDIS_URL"])
    dlq: TopicLog | None = None
    try:
        worker.start()  # creates the topics
        assert worker.stop() == 0
        backlog = Backlog(rng)
        worker.start()  # then the records: a worker that starts slower than it reads them
        bad = produce(worker, backlog)  # would have applied them all before the kill
        assert len({partition for partition, _ in bad}) == 4
        target = rng.randrange(RECORDS // 10, RECORDS * 7 // 10)
        eventually(lambda: True if applied(client, worker) >= target else None, worker,
                   f"{target} relations applied", timeout_s=120, every_s=0.005)
        worker.kill()
        done, total = committed(worker)
        print(f"killed with {done} of {total} records committed")
        assert done < total  # the kill left work to do

        worker.start()
        eventually(lambda: True if committed(worker)[0] == total else None, worker,
                   "every relation committed", timeout_s=180, every_s=0.2)
        time.sleep(1.0)  # many commit intervals: a repeated dead letter would be committed

        expected = backlog.graph()
        assert redis_graph(client, worker.keys, backlog.users) == expected
        followers = Counter(followee for _, followee in expected)
        for user in [*backlog.users, "star"]:
            assert client.hlen(worker.keys.followers(user)) == followers.get(user, 0)
        enter, leave = hot_bounds(THRESHOLD)
        members: set[bytes] = client.smembers(worker.keys.hot())  # type: ignore[assignment]
        hot = {m.decode() for m in members}
        assert "star" in hot and followers["star"] > enter
        assert all(followers[user] > leave for user in hot)
        assert all(user in hot for user, n in followers.items() if n > enter)

        dlq = TopicLog(worker.env["STREAMREC_STREAMS_KAFKA_BOOTSTRAP"], worker.topics["dlq"])
        dlq.poll()
        dlq.poll()
        letters: Counter[tuple[int, int, str]] = Counter()
        for record in dlq.records:
            letter = events_pb2.DeadLetter.FromString(record.value)
            if letter.origin_topic == worker.topics["relations"]:
                letters[(letter.origin_partition, letter.origin_offset, letter.reason)] += 1
        assert max(letters.values()) == 1
        assert {(p, o): reason for p, o, reason in letters} == bad
        assert worker.stop() == 0
    finally:
        if dlq is not None:
            dlq.close()
        client.close()
