"""Fan-out on write against fan-in on read: ordinary users' freshness while one account
with 100,000 followers acts at 10 events/s, through a real streams worker and Redis.

    .venv/bin/python -m bench.social_fanout [--followers 100000] [--star-rate 10] \\
        [--background-rate 500] [--seconds 30] [--reference-seconds 15] \\
        [--redis redis+cluster://127.0.0.1:7000,... --out bench/results/social_fanout_cluster.json]

Needs Kafka and Redis up (``make infra-up``). One private worker (``bench/stack.py``'s
namespace), a catalog of 200 items, a graph loaded through ``relations``: ``star`` with
``--followers`` followers, and 2,000 ordinary users following 10 others each. Then two
phases of the same load (ordinary users' events at ``--background-rate``, star's
purchases at ``--star-rate``), the first one between two shorter ones with star silent
(how fresh the machine lets the worker be at all, before and after):

1. *threshold*: the default fan-out threshold (10,000): star is hot, its acts are read on
   demand (fan-in), ordinary users' acts fan out to their followers.
2. *full fan-out* (the reference): the worker restarted with the threshold above the
   follower count; one more follow makes the graph write take star out of ``hot``, and
   every act of star is written into 100,000 feeds.

Freshness is probed directly: every 100 ms a new user (no followers) makes one event,
and Redis is polled (every millisecond, one pipelined round trip for all outstanding
probes) until that user's ``seen`` set exists: event produced -> online state written.
The fan-out rate is the worker's ``streams_social_feed_writes_total`` over the phase.
Writes ``bench/results/social_fanout.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis
from kafka import KafkaConsumer, KafkaProducer

from bench.freshness import summary
from bench.stack import Child, LocalStack
from bench.streams import cpu_reference_s, scrape
from contracts.online import RedisKeys
from contracts.relations import key_of
from contracts.security import is_cluster_url, redis_client
from contracts.social import DEFAULT_FANOUT_THRESHOLD
from protos import events_pb2

RESULTS = Path(__file__).resolve().parent / "results"
READY = r"\[\^Worker\]: Ready| OK \^"
ITEMS = 200
STAR_ITEMS = 5  # star buys few items: 100,000 feeds of 5 members in the reference phase
ORDINARY_USERS = 2000
FOLLOWS_EACH = 10
PROBE_EVERY_S = 0.1
TYPES = (events_pb2.VIEW, events_pb2.ADD_TO_CART, events_pb2.PURCHASE)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def event(user: str, item: str, kind: int) -> bytes:
    return events_pb2.Event(event_id=f"{user}-{time.time_ns()}-{random.randrange(10**9)}",
                            user_id=user, item_id=item, type=kind,  # type: ignore[arg-type]
                            timestamp_ms=now_ms()).SerializeToString()


def follows(followers: int, rng: random.Random) -> list[events_pb2.Relation]:
    """Star's followers, and the ordinary users' follows among themselves."""
    ts = now_ms()
    relations = [events_pb2.Relation(follower_id=f"fan{k}", followee_id="star",
                                     kind=events_pb2.FOLLOW, timestamp_ms=ts)
                 for k in range(followers)]
    for k in range(ORDINARY_USERS):
        for other in rng.sample(range(ORDINARY_USERS), FOLLOWS_EACH + 1):
            if other != k:
                relations.append(events_pb2.Relation(
                    follower_id=f"u{k}", followee_id=f"u{other}", kind=events_pb2.FOLLOW,
                    timestamp_ms=ts))
    return relations


def send_all(producer: KafkaProducer, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()


def wait_for(probe: Callable[[], object], what: str, worker: Child,
             timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} after {timeout_s:.0f} s:\n{worker.log_tail()}")
        time.sleep(0.2)


def count_keys(kafka: str, topic: str, n: int, worker: Child) -> None:
    """Wait until `topic` holds `n` distinct keys."""
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka, group_id=None,
                             auto_offset_reset="earliest")
    keys: set[bytes] = set()
    try:
        def done() -> bool:
            for batch in consumer.poll(timeout_ms=200).values():
                keys.update(r.key for r in batch)
            return len(keys) >= n

        wait_for(done, f"{n} records on {topic}", worker)
    finally:
        consumer.close()


def bucket_quantiles(before: dict[str, float], after: dict[str, float], metric: str,
                     quantiles: tuple[float, ...] = (0.5, 0.99)) -> dict[str, float | None]:
    """Upper bounds (ms) of the histogram buckets holding each quantile of what `metric`
    observed between two scrapes (None past the last finite bucket)."""
    bounds = []
    for name, count in after.items():
        if name.startswith(f'{metric}_bucket{{le="'):
            le = name.split('le="', 1)[1].rstrip('"}')
            bounds.append((float(le), count - before.get(name, 0.0)))
    bounds.sort()
    total = bounds[-1][1] if bounds else 0.0
    found: dict[str, float | None] = {}
    for q in quantiles:
        upper = next((le for le, n in bounds if total and n >= q * total), None)
        finite = upper is not None and upper != float("inf")
        found[f"p{round(q * 100)}_at_most"] = upper * 1000.0 if finite and upper else None
    return found


class Load:
    """Ordinary users' events and star's purchases at their rates, from two threads."""

    def __init__(self, kafka: str, topic: str, background_rate: float, star_rate: float,
                 items: list[str]) -> None:
        self._producer = KafkaProducer(bootstrap_servers=kafka, acks=1, linger_ms=5)
        self._topic = topic
        self._items = items
        self._stop = threading.Event()
        self.sent = {"background": 0, "star": 0}
        rates = {"background": background_rate, "star": star_rate}
        self._threads = [threading.Thread(target=self._run, args=(name, rate), daemon=True)
                         for name, rate in rates.items() if rate > 0]

    def _run(self, name: str, rate: float) -> None:
        rng = random.Random(name)
        started = time.monotonic()
        while not self._stop.is_set():
            if name == "star":
                user, item, kind = "star", rng.choice(self._items[:STAR_ITEMS]), events_pb2.PURCHASE
            else:
                user = f"u{rng.randrange(ORDINARY_USERS)}"
                item, kind = rng.choice(self._items[STAR_ITEMS:]), rng.choice(TYPES)
            self._producer.send(self._topic, key=user.encode(), value=event(user, item, kind))
            self.sent[name] += 1
            time.sleep(max(0.0, started + self.sent[name] / rate - time.monotonic()))

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._producer.flush()
        self._producer.close()


def probe_freshness(kafka: str, topic: str, client: redis.Redis, keys: RedisKeys,
                    seconds: float, tag: str, item: str, drain_s: float) -> tuple[list[float], int]:
    """Milliseconds from producing a new user's event to their ``seen`` set in Redis, one
    probe every 100 ms for `seconds`; and how many were not seen `drain_s` after the last."""
    producer = KafkaProducer(bootstrap_servers=kafka, acks=1, linger_ms=0)
    sent: dict[str, float] = {}
    samples: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set() or sent:
            waiting = list(sent)
            if waiting:
                try:
                    with client.pipeline(transaction=False) as pipe:
                        for user in waiting:
                            pipe.exists(keys.seen(user))
                        found = pipe.execute()
                except redis.RedisError:  # Redis busy with a long fan-out script: again
                    continue
                seen_at = time.perf_counter()
                for user, there in zip(waiting, found, strict=True):
                    if there:
                        samples.append((seen_at - sent.pop(user)) * 1000.0)
            time.sleep(0.001)
            if done.is_set() and time.perf_counter() > done_at[0] + drain_s:
                return

    done_at = [0.0]
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    started = time.monotonic()
    k = 0
    while time.monotonic() - started < seconds:
        user = f"probe-{tag}-{k}"
        value = event(user, item, events_pb2.VIEW)
        sent[user] = time.perf_counter()
        producer.send(topic, key=user.encode(), value=value)
        k += 1
        time.sleep(max(0.0, started + k * PROBE_EVERY_S - time.monotonic()))
    done_at[0] = time.perf_counter()
    done.set()
    poller.join()
    producer.close()
    return samples, len(sent)


def run_phase(name: str, seconds: float, args: argparse.Namespace, stack: LocalStack,
              client: redis.Redis, items: list[str], metrics_url: str,
              star_rate: float | None = None) -> dict[str, object]:
    keys = RedisKeys(stack.redis_prefix)
    load = Load(args.kafka, stack.topics["events"], args.background_rate,
                args.star_rate if star_rate is None else star_rate, items)
    before = scrape(metrics_url)
    load_before, cpu_before = os.getloadavg(), cpu_reference_s()
    load.start()
    started = time.monotonic()
    samples, lost = probe_freshness(args.kafka, stack.topics["events"], client, keys,
                                    seconds, name, items[-1], drain_s=args.drain_s)
    load.stop()
    elapsed = time.monotonic() - started
    after = scrape(metrics_url)

    def rate(metric: str) -> float:
        return round((after.get(metric, 0.0) - before.get(metric, 0.0)) / elapsed, 1)

    result: dict[str, object] = {
        "star_hot": bool(client.sismember(keys.hot(), "star")),
        "freshness_ms": summary(samples) if samples else {"n": 0},
        "probes_not_seen": lost,
        # All events of the phase, star's too, by the worker's own histogram (bucket bounds).
        "worker_freshness_ms": bucket_quantiles(before, after, "streams_freshness_seconds"),
        "feed_writes_per_s": rate("streams_social_feed_writes_total"),
        "fanin_acts_per_s": rate("streams_social_fanin_acts_total"),
        "events_sent": dict(load.sent),
        "seconds": round(elapsed, 1),
        "load_average_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        # bench.streams' fixed loop (about 0.2 s on an idle core), before and after.
        "cpu_reference_s": [round(cpu_before, 3), round(cpu_reference_s(), 3)],
    }
    print(f"{name}: {json.dumps(result)}")
    return result


def start_worker(stack: LocalStack, workdir: Path, name: str,
                 env: dict[str, str], profile: Path | None = None) -> tuple[Child, str]:
    worker = Child("streams", {**stack.streams.env, **env}, workdir / f"{name}.log")
    if profile is not None:
        worker.python_args = ["-m", "cProfile", "-o", str(profile.resolve())]
    worker.start()
    worker.wait_for_log(READY, 300)
    url = worker.wait_for_log(r"metrics on (http://\S+/metrics)", 60).group(1)
    return worker, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--followers", type=int, default=100_000)
    parser.add_argument("--star-rate", type=float, default=10.0, help="star's events/s")
    parser.add_argument("--background-rate", type=float, default=500.0,
                        help="ordinary users' events/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the threshold phase")
    parser.add_argument("--reference-seconds", type=float, default=15.0,
                        help="length of the full fan-out phase (it keeps Redis busy; 0: "
                        "no such phase)")
    parser.add_argument("--out", type=Path, default=RESULTS / "social_fanout.json")
    parser.add_argument("--profile", type=Path, help="cProfile the first worker to this file")
    parser.add_argument("--drain-s", type=float, default=30.0,
                        help="how long probes may still arrive after a phase")
    args = parser.parse_args()
    rng = random.Random(7)
    items = [f"item-{k}" for k in range(ITEMS)]
    results: dict[str, object] = {"followers": args.followers, "star_rate": args.star_rate,
                                  "background_rate": args.background_rate,
                                  "cpus": os.cpu_count(),
                                  "redis": "cluster" if is_cluster_url(args.redis) else "single"}

    with tempfile.TemporaryDirectory(prefix="bench-social-") as tmp:
        workdir = Path(tmp)
        stack = LocalStack(kafka=args.kafka, redis_url=args.redis, workdir=workdir,
                           extra_env={"STREAMREC_STREAMS_METRICS_PORT": "0",
                                      "STREAMREC_STREAMS_METRICS_HOST": "127.0.0.1"})
        # A long timeout: a full fan-out to 100,000 feeds keeps Redis busy for seconds.
        client = redis_client(args.redis, None, socket_timeout=120)  # or a cluster URL
        producer = KafkaProducer(bootstrap_servers=args.kafka, acks="all", linger_ms=20,
                                 batch_size=1 << 20)
        worker: Child | None = None
        try:
            worker, url = start_worker(stack, workdir, "threshold", {}, args.profile)
            send_all(producer, stack.topics["items"], [
                (item.encode(), events_pb2.Item(item_id=item, title=f"Product {k}")
                 .SerializeToString()) for k, item in enumerate(items)])
            relations = follows(args.followers, rng)
            print(f"loading {len(relations):,} follows ...")
            loading = time.monotonic()
            send_all(producer, stack.topics["relations"],
                     [(key_of(r), r.SerializeToString()) for r in relations])
            keys = RedisKeys(stack.redis_prefix)
            wait_for(lambda: client.hlen(keys.followers("star")) >= args.followers,
                     "star's followers", worker)
            wait_for(lambda: client.exists(keys.following(f"u{ORDINARY_USERS - 1}")),
                     "the ordinary follows", worker)
            results["graph_load_s"] = round(time.monotonic() - loading, 1)
            count_keys(args.kafka, stack.topics["item_vectors"], ITEMS, worker)
            print(f"graph loaded in {results['graph_load_s']} s; catalog embedded")
            results["star_silent"] = run_phase("star_silent", args.seconds / 2, args, stack,
                                               client, items, url, star_rate=0.0)
            phase = run_phase("threshold", args.seconds, args, stack, client, items, url)
            results["threshold"] = {"fanout_threshold": DEFAULT_FANOUT_THRESHOLD, **phase}
            results["star_silent_after"] = run_phase("star_silent_after", args.seconds / 2,
                                                     args, stack, client, items, url,
                                                     star_rate=0.0)
            worker.stop(timeout_s=60)
            worker = None
            if args.reference_seconds <= 0:
                finish(results, args.out)
                return

            above = args.followers * 10
            worker, url = start_worker(stack, workdir, "fanout",
                                       {"STREAMREC_STREAMS_FANOUT_THRESHOLD": str(above)})
            late = events_pb2.Relation(follower_id="late-fan", followee_id="star",
                                       kind=events_pb2.FOLLOW, timestamp_ms=now_ms())
            send_all(producer, stack.topics["relations"],
                     [(key_of(late), late.SerializeToString())])
            wait_for(lambda: not client.sismember(keys.hot(), "star"), "star out of hot", worker)
            phase = run_phase("full_fanout", args.reference_seconds, args, stack, client,
                              items, url)
            results["full_fanout"] = {"fanout_threshold": above, **phase}
            worker.stop(timeout_s=120)
        finally:
            if worker is not None:
                worker.stop(timeout_s=30)
            producer.close()
            stack.delete_state()
            client.close()

    finish(results, args.out)


def finish(results: dict[str, object], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    results["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
