"""Throughput of one streams worker on a MovieLens-1M replay, against the raw consume rate
of the same topic by a plain client, measured in the same run.

    .venv/bin/python -m bench.streams [--events 300000] [--workers 1] [--profile worker.prof]
                                      [--tower 300 [--artifacts var/bench-tower]]

Needs Kafka and Redis up (``make infra-up``). Steps, in a private namespace
(``bench/stack.py``): a first worker embeds the MovieLens-1M catalog (3,883 items) and
stops; the first ``--events`` ratings (event-time order, as a replay sends them) are
produced to ``events``; a plain aiokafka consumer reads them all (the reference); a
second worker of the same consumer group starts, loads the catalog and its vectors, and
drains the topic, updating every user's history, ``seen``/``acts``, popular/trending and
user vector. Its rate is taken from the timestamps of its own ``events.enriched``
records (first to last), so start-up is not counted; the wall time from "Ready" to the
last output is reported too. With ``--workers N`` that many workers of the group drain the
topic together (each its own state directory; the events partitions split between them);
their start-up overlaps the first outputs, so the steady rate between the 10th and the
90th percentile of the output times is reported beside the first-to-last one.

With ``--tower SECONDS`` that first drain (bootstrap version ``base``, weighted-mean user
vectors) is the reference: ``python -m training run`` then trains the shipped recipe on
its ``events.enriched`` for that long and promotes it into an artifact store, and workers
of a second group, starting with that version, drain the same events again through the
exported user tower into their own outputs and Redis keys. The tower's drain is the
reported one, with the version it ran and the base drain's figures beside it. Writes
``--out`` (``bench/results/streams.json``), keeping the freshness figures of
``bench.freshness`` (run that one for them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from bench.stack import Child, LocalStack, catalog_time_ms, delete_keys
from contracts.console import progress_bar
from contracts.online import NEWEST_FIELD, RedisKeys
from contracts.security import redis_client
from ingest import movielens
from ingest.messages import event_records, item_records
from protos import events_pb2

RESULTS = Path(__file__).resolve().parent / "results"
PARTITIONS = 4
READY = r"\[\^Worker\]: Ready| OK \^"


async def produce(kafka: str, topic: str, records: list[tuple[str, bytes]]) -> float:
    """Send every record (key user or item id); returns seconds until all are acked."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", linger_ms=5,
                                max_batch_size=1 << 20)
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for key, value in progress_bar(records, desc=f"produce {topic}", unit="rec"):
            pending.append(await producer.send(topic, key=key.encode(), value=value))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def raw_consume(kafka: str, topic: str, count: int) -> float:
    """Records per second of a plain group-less aiokafka consumer reading `count` records."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=4 << 20)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        await consumer.seek_to_beginning()
        seen = 0
        started = time.perf_counter()
        while seen < count:
            batches = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            seen += sum(len(records) for records in batches.values())
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def output_times(kafka: str, topics: list[str], count: int, timeout_s: float,
                       *alive: Child) -> list[int]:
    """Record timestamps (ms) of the first `count` records of `topics` together."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level="read_committed")
    await consumer.start()
    times: list[int] = []
    try:
        consumer.assign([TopicPartition(t, p) for t in topics for p in range(PARTITIONS)])
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout_s
        with progress_bar(total=count, desc="worker output", unit="ev") as bar:
            while len(times) < count:
                batches = await consumer.getmany(timeout_ms=1000, max_records=20_000)
                for records in batches.values():
                    times.extend(record.timestamp for record in records)
                    bar.update(len(records))
                for child in alive:
                    child.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(times)} of {count} outputs after {timeout_s} s")
    finally:
        await consumer.stop()
    return sorted(times)


def cpu_reference_s() -> float:
    """Seconds for a fixed pure-Python loop: how much CPU this process gets right now
    (about 0.2 s on an idle core of the reference machine)."""
    started = time.perf_counter()
    sum(range(10_000_000))
    return time.perf_counter() - started


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def create_topics(kafka: str, stack: LocalStack) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    try:
        admin.create_topics([NewTopic(stack.topics["events"], PARTITIONS, 1)])
    finally:
        admin.close()


def newest_events(events: list[tuple[str, bytes]]) -> dict[str, int]:
    """User id -> event time (ms) of the user's newest event."""
    newest: dict[str, int] = {}
    for _, value in events:
        event = events_pb2.Event.FromString(value)
        newest[event.user_id] = max(newest.get(event.user_id, 0), event.timestamp_ms)
    return newest


def vectors_settled(client: redis.Redis, keys: RedisKeys, newest: dict[str, int],
                    timeout_s: float = 600) -> tuple[int, int]:
    """(wall time in ms, users behind) once every user's vector holds the user's newest
    event, or once nothing changed for 10 s (users behind: those still short of it). With
    deferred vectors (``streams.pending``) they follow the enriched events."""
    users = list(newest)
    deadline, last_change, behind_before = time.monotonic() + timeout_s, time.monotonic(), -1
    while True:
        with client.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.hget(keys.user_vector(user), NEWEST_FIELD)
            found = pipe.execute()
        behind = sum(ts is None or int(ts) < newest[u] for u, ts in zip(users, found, strict=True))
        now = time.monotonic()
        if behind != behind_before:
            behind_before, last_change = behind, now
        if behind == 0 or now - last_change > 10 or now > deadline:
            return int(time.time() * 1000) if behind == 0 else int(
                (time.time() - (now - last_change)) * 1000), behind
        time.sleep(0.05)


def drain(args: argparse.Namespace, stack: LocalStack, workdir: Path, count: int,
          client: redis.Redis, *, label: str, artifacts: Path | None = None,
          newest: dict[str, int] | None = None) -> dict[str, Any]:
    """Start ``--workers`` workers of one consumer group, time their outputs until all
    `count` events are enriched or dead-lettered, and (given each user's `newest` event
    time) until every user's vector holds it, stop them. A `label` gives the workers
    their own app id, outputs, Redis prefix and state (a second drain of the same events)
    and `artifacts` their artifact store (its production version is the one they run)."""
    env = dict(stack.streams.env)
    enriched, dlq = stack.topics["enriched"], stack.topics["dlq"]
    prefix = stack.redis_prefix
    if label:
        enriched, dlq = f"{enriched}-{label}", f"{dlq}-{label}"
        prefix = f"stack-{stack.suffix}-{label}:"
        env.update({
            "STREAMREC_STREAMS_APP_ID": f"{env['STREAMREC_STREAMS_APP_ID']}-{label}",
            "STREAMREC_STREAMS_TOPIC_ENRICHED": enriched,
            "STREAMREC_STREAMS_TOPIC_DLQ": dlq,
            "STREAMREC_STREAMS_REDIS_PREFIX": prefix,
        })
    if artifacts is not None:
        env["STREAMREC_STREAMS_ARTIFACT_DIR"] = str(artifacts)
    # The first unlabelled worker drains with the catalog worker's state directory;
    # every other one restores its own.
    drains = [Child("streams", {**env, **({} if n == 0 and not label else {
        "STREAMREC_STREAMS_DATADIR": str(workdir / f"streams-data-{label}{n}")})},
        workdir / f"drain-{label}{n}.log") for n in range(args.workers)]
    if args.profile and not label:
        drains[0].python_args = ["-m", "cProfile", "-o", str(args.profile.resolve())]
    try:
        for worker in drains:
            worker.start()
        for worker in drains:
            worker.wait_for_log(READY, 300)
        ready = time.time()
        urls = [re.search(r"metrics on (http://\S+/metrics)", w.log()) for w in drains]
        times = asyncio.run(output_times(args.kafka, [enriched, dlq], count, 1800, *drains))
        settled_ms, behind = vectors_settled(client, RedisKeys(prefix), newest or {})
        scraped = [scrape(url.group(1)) for url in urls if url]
        metrics = {name: sum(values.get(name, 0.0) for values in scraped)
                   for name in set().union(*scraped)} if scraped else {}
        vectors = sum(1 for _ in client.scan_iter(match=RedisKeys(prefix).user_vector("*"),
                                                  count=10_000))
        version = re.search(r"model version (\S+)", drains[0].log())
        encoder = re.search(r"user encoder (\w+)", drains[0].log())
    finally:
        for worker in drains:
            worker.stop(timeout_s=120)
        if label:
            delete_keys(client, prefix)
    sustained = (len(times) - 1) / ((times[-1] - times[0]) / 1000.0)
    low, high = times[len(times) // 10], times[len(times) * 9 // 10]
    return {
        "events_per_s": round(sustained),
        "steady_p10_p90_events_per_s": round(
            (len(times) * 9 // 10 - len(times) // 10) / max((high - low) / 1000.0, 1e-3)),
        "ready_to_last_output_events_per_s": round(len(times) / (times[-1] / 1000.0 - ready)),
        # deferred user vectors follow the enriched events: until the last user's holds
        # its newest event (users_behind: those that never did)
        "vectors_settled_after_last_output_ms": max(settled_ms - times[-1], 0),
        "events_per_s_until_vectors_settled": round(
            (len(times) - 1) / (max(settled_ms, times[-1]) - times[0]) * 1000.0),
        "users_behind": behind,
        "model_version": version.group(1) if version else None,
        "user_encoder": encoder.group(1) if encoder else None,
        "user_vectors_in_redis": vectors,
        "worker_metrics": {
            name: metrics.get(name) for name in (
                "streams_events_enriched_total", "streams_user_vectors_total",
                "streams_batch_size_sum", "streams_batch_size_count",
                "streams_encode_seconds_sum{encoder=\"user\"}",
                "streams_encode_seconds_count{encoder=\"user\"}",
                "streams_vector_deferral_seconds_sum", "streams_vector_deferral_seconds_count",
            )
        },
    }


def train_tower(stack: LocalStack, store: Path, budget_s: float) -> str:
    """Train the shipped recipe on what the first drain enriched (``python -m training
    run``, `budget_s` seconds of training), promoted into `store`; its version. With
    `budget_s` 0 the store's production version is used as it is (trained before)."""
    if budget_s == 0:
        return json.loads((store / "production.json").read_text())["version"]
    env = {**stack.streams.env, **stack.training_env(),
           "STREAMREC_TRAINING_ARTIFACT_DIR": str(store),
           "STREAMREC_TRAINING_TRAIN_TIME_BUDGET_S": str(budget_s)}
    print(f"training the user tower for {budget_s:.0f} s into {store} ...")
    subprocess.run([sys.executable, "-m", "training", "run"], env=env, check=True)
    return json.loads((store / "production.json").read_text())["version"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--events", type=int, default=300_000, help="ratings to replay")
    parser.add_argument("--workers", type=int, default=1, help="workers draining the topic together")
    parser.add_argument("--profile", type=Path, help="cProfile the (first) draining worker to this file")
    parser.add_argument("--out", type=Path, default=RESULTS / "streams.json")
    parser.add_argument("--tower", type=float, metavar="SECONDS",
                        help="then train the user tower this long on the drained events "
                             "and drain them again with it (the measured drain); 0: use the "
                             "production version of --artifacts, trained by an earlier run")
    parser.add_argument("--artifacts", type=Path,
                        help="artifact store the tower is trained into (kept; default: a "
                             "temporary one)")
    parser.add_argument("--env", action="append", default=[],
                        help="extra worker setting NAME=VALUE (repeatable)")
    args = parser.parse_args()

    dataset = movielens.load()
    ratings = dataset.interactions.head(args.events)
    events = list(event_records(dataset.name, ratings))
    reused = args.tower == 0 and args.artifacts is not None  # a store trained before
    items = list(item_records(dataset.items, catalog_time_ms(args.artifacts if reused else None)))
    users = int(ratings["user_id"].nunique())
    newest = newest_events(events)
    extra = dict(setting.split("=", 1) for setting in args.env)
    cpu_before = cpu_reference_s()

    with tempfile.TemporaryDirectory(prefix="bench-streams-") as workdir:
        stack = LocalStack(kafka=args.kafka, redis_url=args.redis, workdir=Path(workdir),
                           extra_env={"STREAMREC_STREAMS_METRICS_PORT": "0",
                                      "STREAMREC_STREAMS_METRICS_HOST": "127.0.0.1", **extra})
        client = redis_client(args.redis, None)  # or a cluster URL
        try:
            create_topics(args.kafka, stack)
            print(f"embedding {len(items)} catalog items with a first worker ...")
            stack.streams.start()
            stack.streams.wait_for_log(READY, 300)
            asyncio.run(produce(args.kafka, stack.topics["items"], items))
            asyncio.run(output_times(args.kafka, [stack.topics["item_vectors"]], len(items),
                                     900, stack.streams))
            stack.streams.stop()

            produce_s = asyncio.run(produce(args.kafka, stack.topics["events"], events))
            print(f"produced {len(events):,} events in {produce_s:.1f} s")
            raw = asyncio.run(raw_consume(args.kafka, stack.topics["events"], len(events)))
            print(f"reference: plain aiokafka consumer {raw:,.0f} records/s")

            base = drain(args, stack, Path(workdir), len(events), client, label="",
                         newest=newest)
            tower = None
            if args.tower is not None:
                store = args.artifacts or Path(workdir) / "tower-artifacts"
                version = train_tower(stack, store, args.tower)
                tower = drain(args, stack, Path(workdir), len(events), client, label="tower",
                              artifacts=store, newest=newest)
                tower["model_version"] = version
            cpu_after = cpu_reference_s()
        finally:
            stack.stop()
            stack.delete_state()
            client.close()

    previous = {}
    if args.out.is_file():
        previous = json.loads(args.out.read_text())
    freshness = previous.get("freshness_ms")
    if (RESULTS / "freshness.json").is_file():
        measured = json.loads((RESULTS / "freshness.json").read_text())["freshness_ms"]
        freshness = {key: measured[key] for key in ("p50", "p99", "max")}
    measured_drain = tower or base
    result = {
        "events_per_s": measured_drain["events_per_s"],
        "raw_consume_per_s": round(raw),
        "ratio": round(measured_drain["events_per_s"] / raw, 3),
        "workers": args.workers,
        "model_version": measured_drain["model_version"],
        "user_encoder": measured_drain["user_encoder"],
        "steady_p10_p90_events_per_s": measured_drain["steady_p10_p90_events_per_s"],
        "events_per_s_until_vectors_settled":
            measured_drain["events_per_s_until_vectors_settled"],
        "vectors_settled_after_last_output_ms":
            measured_drain["vectors_settled_after_last_output_ms"],
        "freshness_ms": freshness,
        "events": len(events),
        "users": users,
        "user_vectors_in_redis": measured_drain["user_vectors_in_redis"],
        "ready_to_last_output_events_per_s": measured_drain["ready_to_last_output_events_per_s"],
        "worker_metrics": measured_drain["worker_metrics"],
        "worker_settings": extra,
        "cpu_reference_s": {"before": round(cpu_before, 3), "after": round(cpu_after, 3)},
        "load_average_1m_after": round(os.getloadavg()[0], 2),
    }
    if tower is not None:
        if (RESULTS / "freshness-tower.json").is_file():  # bench.freshness --artifacts
            measured = json.loads((RESULTS / "freshness-tower.json").read_text())
            result["freshness_with_tower_ms"] = {
                key: measured["freshness_ms"][key] for key in ("p50", "p99", "max")}
            result["freshness_with_tower_model_version"] = measured.get("model_version")
        result["base_in_same_run"] = base
        result["tower_over_base"] = round(tower["events_per_s"] / base["events_per_s"], 3)
        result["tower_train_budget_s"] = args.tower
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
