"""Freshness: from producing an event to Kafka until that user's next ``Recommend`` answer
reflects it, through the real streams worker, Redis and gRPC server.

    .venv/bin/python -m bench.freshness [--trials 50] [--background-rate 1000] [--artifacts DIR]

Needs Kafka and Redis up (``make infra-up``). Starts a private stack (``bench/stack.py``),
publishes the MovieLens-1M catalog, then per trial: a fresh user makes one event, the
item ranked first for them is noted, an event on that item is produced at t0, and
``Recommend`` is polled until the item is gone (a seen item is never recommended) at t1.
Between the two, Redis is polled (every 0.2 ms) until the worker has written the event to
the user's ``seen`` set: the streams part of the time, reported on its own; and the
user's vector until it holds the event (its ``ts``): with a trained tower the vector is
written by a pass of its own after the batch (``user_vectors`` auto / deferred,
``streams.pending``), and this is when the user's next ranking reflects it. All three are
polled by one loop in one thread (a second polling thread would make each wait for the
GIL and inflate the figures).
A background thread replays MovieLens-1M ratings as live events at ``--background-rate``.

Reference in the same run: the plain produce -> consume latency of one record through
the same broker (kafka-python, 10 ms fetch wait), which bounds what any consumer sees.
Prints medians and the ratio; writes ``--out`` (``bench/results/freshness.json``).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from bench.stack import LocalStack, catalog_time_ms
from bench.streams import scrape
from contracts.console import progress_bar
from contracts.online import NEWEST_FIELD, RedisKeys
from contracts.security import redis_client
from ingest import movielens
from ingest.messages import item_records
from protos import events_pb2, recommender_pb2, recommender_pb2_grpc

RESULTS = Path(__file__).resolve().parent / "results"
# What the worker did during the trials: its batches, its user-encoder calls (with a
# trained tower, the deferred passes) and how long users waited for their vector.
WORKER_METRICS = (
    "streams_batch_size_sum", "streams_batch_size_count",
    'streams_encode_seconds_sum{encoder="user"}', 'streams_encode_seconds_count{encoder="user"}',
    "streams_user_vectors_total",
    "streams_vector_deferral_seconds_sum", "streams_vector_deferral_seconds_count",
    "streams_freshness_seconds_sum", "streams_freshness_seconds_count",
)


def summary(samples_ms: list[float]) -> dict[str, float]:
    values = np.asarray(samples_ms)
    return {
        "n": len(samples_ms),
        "p50": round(float(np.percentile(values, 50)), 2),
        "p90": round(float(np.percentile(values, 90)), 2),
        "p99": round(float(np.percentile(values, 99)), 2),
        "max": round(float(values.max()), 2),
    }


def raw_kafka_latency(kafka: str, trials: int) -> list[float]:
    """Milliseconds from send to a consumer's poll returning the record, one at a time."""
    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    producer = KafkaProducer(bootstrap_servers=kafka, acks="all", linger_ms=0)
    consumer = KafkaConsumer(bootstrap_servers=kafka, group_id=None, fetch_max_wait_ms=10,
                             enable_auto_commit=False)
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_end()
    consumer.position(partition)  # resolves the lazy seek now, before anything is sent
    samples = []
    try:
        for trial in range(trials):
            token = f"{trial:08d}".encode() + b"x" * 192
            started = time.perf_counter()
            producer.send(topic, value=token)
            deadline = started + 30
            while not any(record.value == token
                          for batch in consumer.poll(timeout_ms=100).values() for record in batch):
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"record {trial} not consumed within 30 s")
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        consumer.close()
        producer.close()
        admin.delete_topics([topic])
        admin.close()
    return samples


class Background(threading.Thread):
    """Replays MovieLens ratings as live events at a fixed rate until stopped."""

    def __init__(self, kafka: str, topic: str, interactions: list[tuple[str, str]],
                 rate: float) -> None:
        super().__init__(daemon=True)
        self._producer = KafkaProducer(bootstrap_servers=kafka, acks=1, linger_ms=5)
        self._topic = topic
        self._interactions = interactions
        self._rate = rate
        self._halt = threading.Event()
        self.sent = 0

    def run(self) -> None:
        started = time.perf_counter()
        while not self._halt.is_set():
            due = int((time.perf_counter() - started) * self._rate)
            while self.sent < due:
                user, item = self._interactions[self.sent % len(self._interactions)]
                event = events_pb2.Event(
                    event_id=f"bg-{self.sent}-{uuid.uuid4().hex[:6]}", user_id=f"bg-{user}",
                    item_id=item, type=events_pb2.VIEW, timestamp_ms=int(time.time() * 1000))
                self._producer.send(self._topic, key=event.user_id.encode(),
                                    value=event.SerializeToString())
                self.sent += 1
            time.sleep(0.005)
        self._producer.flush()
        self._producer.close()

    def stop(self) -> None:
        self._halt.set()
        self.join()


def send_event(producer: KafkaProducer, topic: str, user_id: str, item_id: str) -> int:
    """Send one view now; returns its event time (ms)."""
    event = events_pb2.Event(event_id=uuid.uuid4().hex, user_id=user_id, item_id=item_id,
                             type=events_pb2.VIEW, timestamp_ms=int(time.time() * 1000))
    producer.send(topic, key=user_id.encode(), value=event.SerializeToString())
    producer.flush()
    return event.timestamp_ms


def wait_until(probe, timeout_s: float, what: str, stack: LocalStack):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not within {timeout_s} s:\n{stack.streams.log_tail()}"
                               f"\n{stack.serving.log_tail()}")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--background-rate", type=float, default=1000.0, help="events/s")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS / "freshness.json")
    parser.add_argument("--artifacts", type=Path,
                        help="an artifact store whose production version the worker and the "
                             "server run (default: none, the bootstrap version base)")
    parser.add_argument("--env", action="append", default=[],
                        help="extra worker setting NAME=VALUE (repeatable)")
    args = parser.parse_args()
    extra = dict(setting.split("=", 1) for setting in args.env)

    dataset = movielens.load()
    items = dataset.items
    ratings = dataset.interactions
    background_pairs = list(zip(ratings["user_id"].head(200_000), ratings["item_id"].head(200_000),
                                strict=True))
    item_ids = list(items["item_id"])
    rng = random.Random(7)

    print("reference: raw Kafka produce -> consume latency ...")
    raw = raw_kafka_latency(args.kafka, args.trials)

    with tempfile.TemporaryDirectory(prefix="bench-freshness-") as workdir:
        stack = LocalStack(kafka=args.kafka, redis_url=args.redis, workdir=Path(workdir),
                           extra_env={"STREAMREC_STREAMS_METRICS_PORT": "0",
                                      "STREAMREC_STREAMS_METRICS_HOST": "127.0.0.1", **extra})
        version = "base"
        if args.artifacts is not None:
            shutil.copytree(args.artifacts, stack.artifact_dir)
            version = json.loads((stack.artifact_dir / "production.json").read_text())["version"]
        producer = KafkaProducer(bootstrap_servers=args.kafka, acks="all", linger_ms=0)
        background: Background | None = None
        try:
            started = time.monotonic()
            stack.start()
            for key, value in item_records(items, catalog_time_ms(args.artifacts)):
                producer.send(stack.topics["items"], key=key.encode(), value=value)
            producer.flush()
            channel = grpc.insecure_channel(f"127.0.0.1:{stack.port}")
            stub = recommender_pb2_grpc.RecommenderStub(channel)

            def has_vector(item_id: str) -> bool:
                try:
                    stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id=item_id, k=1))
                except grpc.RpcError:
                    return False
                return True

            print(f"embedding {len(item_ids)} catalog items in the streams worker ...")
            wait_until(lambda: has_vector(item_ids[-1]), 600, "the catalog's vectors", stack)
            print(f"stack ready in {time.monotonic() - started:.0f} s")
            if args.background_rate > 0:
                background = Background(args.kafka, stack.topics["events"], background_pairs,
                                        args.background_rate)
                background.start()

            def recommend(user: str) -> recommender_pb2.RecommendResponse:
                return stub.Recommend(recommender_pb2.RecommendRequest(user_id=user, k=args.k),
                                      timeout=5)

            client = redis_client(args.redis, None)  # or a cluster URL
            keys = RedisKeys(stack.redis_prefix)

            def watch(user: str, item: str, since_ms: int, t0: float) -> dict[str, float]:
                """Milliseconds from `t0` until the event is in the user's seen set, until
                Recommend no longer returns `item`, and until the user's vector holds an
                event at or after `since_ms`."""
                found: dict[str, float] = {}
                deadline, asked = time.monotonic() + 30, 0.0
                while len(found) < 3:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"only {sorted(found)} within 30 s:\n"
                                           f"{stack.streams.log_tail()}")
                    with client.pipeline(transaction=False) as pipe:
                        pipe.zscore(keys.seen(user), item)
                        pipe.hget(keys.user_vector(user), NEWEST_FIELD)
                        score, newest = pipe.execute()
                    now = (time.perf_counter() - t0) * 1000
                    if "redis" not in found and score is not None:
                        found["redis"] = now
                    if "vector" not in found and newest is not None and int(newest) >= since_ms:
                        found["vector"] = now
                    if "answer" not in found and "redis" in found and \
                            time.perf_counter() - asked > 0.005:
                        asked = time.perf_counter()
                        if all(i.item_id != item for i in recommend(user).items):
                            found["answer"] = (time.perf_counter() - t0) * 1000
                    time.sleep(0.0002)
                return found

            samples, streams_samples, vector_samples = [], [], []
            for trial in progress_bar(range(args.trials), desc="freshness trials"):
                user = f"probe-{stack.suffix}-{trial}"
                send_event(producer, stack.topics["events"], user, rng.choice(item_ids))
                first = wait_until(
                    lambda u=user: (r := recommend(u)).strategy == "personal" and r, 30,
                    "a personal answer", stack)
                target = first.items[0].item_id
                t0 = time.perf_counter()
                sent_ms = send_event(producer, stack.topics["events"], user, target)
                times = watch(user, target, sent_ms, t0)
                streams_samples.append(times["redis"])
                samples.append(times["answer"])
                vector_samples.append(times["vector"])
            url = re.search(r"metrics on (http://\S+/metrics)", stack.streams.log())
            scraped = scrape(url.group(1)) if url else {}
            worker_metrics = {name: scraped.get(name) for name in WORKER_METRICS}
            channel.close()
            client.close()
        finally:
            if background is not None:
                background.stop()
            producer.close()
            stack.stop()
            stack.delete_state()

    result = {
        "freshness_ms": summary(samples),
        "produce_to_redis_ms": summary(streams_samples),
        "produce_to_user_vector_ms": summary(vector_samples),
        "raw_kafka_ms": summary(raw),
        "ratio_p50": round(statistics.median(samples) / statistics.median(raw), 2),
        "background_events_per_s": args.background_rate,
        "background_events_sent": background.sent if background else 0,
        "catalog_items": len(item_ids),
        "model_version": version,
        "worker_settings": extra,
        "worker_metrics": worker_metrics,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
