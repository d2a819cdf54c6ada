"""Load test of the serving stack: Recommend next to a trivial Echo on the same server.

    PYTHONPATH=. python bench/serving.py --items 1000000 --users 10000 --duration 8

Builds (once, cached in --workdir) an artifact of `--items` synthetic clustered `--dim`-d
item vectors, writes realistic user state to Redis under a private prefix (a vector of
the served version and 20-60 recently seen items per user), starts ``python -m serving``
as a child process on private topics, then, from this process (the client is never the
server's process):

1. recall@10 of the served index: Recommend for users without history against exact
   search over every item vector;
2. latency (p50/p99/max) and throughput of ``Diagnostics.Echo`` and ``Recommend`` at 1,
   8 and 64 requests in flight, alternating per concurrency.

Writes a JSON summary (--out) and prints it. Timings are of this machine at this moment:
compare Recommend with Echo from the same run only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
from aiokafka.admin import AIOKafkaAdminClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis import Redis

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from contracts.topics import (  # noqa: E402
    EVENTS, ITEM_VECTORS, ITEMS, RECOMMENDATIONS, TopicLayout, ensure_topics, spec,
)
from contracts.online import (  # noqa: E402
    NEWEST_FIELD,
    VECTOR_FIELD,
    VERSION_FIELD,
    WRITTEN_AT_FIELD,
    RedisKeys,
    encode_vector,
)
from contracts.channel import recommender_channel  # noqa: E402
from protos import recommender_pb2, recommender_pb2_grpc  # noqa: E402

DIM = 64  # the trained model's dimension (training.model.ModelConfig.dim); --dim 384 for the bootstrap model
VERSION = "bench-v1"
_LISTENING = re.compile(r"listening on [^ ]+:(\d+)")
_ALL_LISTENING = re.compile(r"workers: listening on [^ ]+:(\d+)")  # the supervisor, once every worker listens


def clustered(rng: np.random.Generator, n: int, clusters: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` unit rows [n, dim] around `clusters` centres, and each row's cluster [n]."""
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    assignment = rng.integers(0, clusters, size=n)
    rows = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # in chunks: the noise of 1M rows at once is 1.5 GB more
        part = slice(start, min(n, start + 100_000))
        block = centres[assignment[part]] + 0.3 * rng.standard_normal((part.stop - start, dim), dtype=np.float32)
        rows[part] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return rows, assignment


def artifact(workdir: Path, items: int, dim: int) -> tuple[Path, np.ndarray, np.ndarray]:
    """The artifact store (cached per item count and dimension), its item vectors and clusters."""
    store = workdir / (f"artifacts-{items}" if dim == 384 else f"artifacts-{items}-d{dim}")
    version_dir = store / VERSION
    if not (version_dir / "item_vectors.npy").exists():
        print(f"writing {items} clustered vectors to {version_dir} ...", flush=True)
        vectors, assignment = clustered(np.random.default_rng(0), items, max(1, items // 50), dim)
        version_dir.mkdir(parents=True, exist_ok=True)
        (version_dir / "item_ids.json").write_text(json.dumps([f"item-{n}" for n in range(items)]))
        np.save(version_dir / "item_vectors.npy", vectors)
        np.save(store / "clusters.npy", assignment)
        (version_dir / "manifest.json").write_text(json.dumps({
            "format": 1, "version": VERSION, "created_at": "2026-11-23T00:00:00+00:00", "dim": dim,
            "item_encoder": {"kind": "synthetic"}, "user_encoder": {"kind": "weighted_mean"},
            "data_window": {}, "n_events": 0, "n_items": items, "metrics": {}, "config": {},
        }))
        (store / "production.json").write_text(json.dumps({"version": VERSION, "previous": None}))
    vectors = np.load(version_dir / "item_vectors.npy", mmap_mode="r")
    return store, vectors, np.load(store / "clusters.npy")


def user_vectors(rng: np.random.Generator, vectors: np.ndarray, clusters: np.ndarray,
                 n: int) -> tuple[np.ndarray, list[list[int]]]:
    """Users who touched 20-60 items of a few clusters: their mean vector and item rows."""
    by_cluster = np.argsort(clusters, kind="stable")
    starts = np.searchsorted(clusters[by_cluster], np.arange(clusters.max() + 2))
    users = np.empty((n, vectors.shape[1]), dtype=np.float32)
    seen: list[list[int]] = []
    for u in range(n):
        rows: list[int] = []
        for c in rng.integers(0, clusters.max() + 1, size=rng.integers(1, 4)):
            members = by_cluster[starts[c]:starts[c + 1]]
            rows += rng.choice(members, size=min(len(members), int(rng.integers(20, 61)) // 2),
                               replace=False).tolist()
        mean = np.asarray(vectors[np.sort(rows)]).mean(axis=0)
        users[u] = mean / np.linalg.norm(mean)
        seen.append(rows)
    return users, seen


def write_users(redis: Redis, prefix: str, users: np.ndarray, seen: list[list[int]],
                names: list[str]) -> None:
    now = int(time.time() * 1000)
    keys = RedisKeys(prefix)
    pipe = redis.pipeline(transaction=False)
    for n, name in enumerate(names):
        pipe.hset(keys.user_vector(name), mapping={
            VECTOR_FIELD: encode_vector(users[n]), VERSION_FIELD: VERSION,
            NEWEST_FIELD: now, WRITTEN_AT_FIELD: now,
        })
        if seen[n]:
            pipe.zadd(keys.seen(name), {f"item-{row}": now - i for i, row in enumerate(seen[n])})
        if n % 1000 == 999:
            pipe.execute()
    pipe.execute()


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the k nearest items per query, by brute force [n_queries, k]."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(vectors), 100_000):
        block = np.asarray(vectors[start:start + 100_000])
        scores = queries @ block.T  # [nq, block]
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        merged_rows = np.concatenate([best_rows, top + start], axis=1)
        order = np.argsort(-merged_scores, axis=1)[:, :k]
        best_scores = np.take_along_axis(merged_scores, order, 1)
        best_rows = np.take_along_axis(merged_rows, order, 1)
    return best_rows


ROLES = {"events": EVENTS, "items": ITEMS, "item-vectors": ITEM_VECTORS,
         "recommendations": RECOMMENDATIONS}


async def create_topics(bootstrap: str, names: dict[str, str]) -> None:
    """The run's topics, one partition each, with their contract settings."""
    layout = TopicLayout(topic_partitions=1)
    await ensure_topics(bootstrap, [spec(ROLES[role], name, layout) for role, name in names.items()],
                        client_id="streamrec-bench")


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


def start_server(env: dict[str, str], log_path: Path, timeout_s: float) -> tuple[subprocess.Popen[bytes], int]:
    listening = _ALL_LISTENING if int(env.get("STREAMREC_SERVING_WORKERS", "1")) > 1 else _LISTENING
    log = open(log_path, "wb")
    process = subprocess.Popen([sys.executable, "-m", "serving"], cwd=REPO_ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = listening.search(log_path.read_text(errors="replace"))
        if found:
            return process, int(found.group(1))
        if process.poll() is not None:
            raise SystemExit(f"server exited:\n{log_path.read_text()}")
        time.sleep(0.5)
    process.terminate()
    raise SystemExit(f"server not listening after {timeout_s} s; see {log_path}")


async def wait_serving(channel: grpc.aio.Channel, timeout_s: float) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return
        await asyncio.sleep(0.2)
    raise SystemExit("server not SERVING in time")


async def recall_at_10(stub: recommender_pb2_grpc.RecommenderStub, names: list[str],
                       exact: np.ndarray) -> float:
    hits = 0
    for name, rows in zip(names, exact, strict=True):
        reply = await stub.Recommend(recommender_pb2.RecommendRequest(user_id=name, k=10), timeout=5)
        assert reply.strategy == "personal", reply.strategy
        hits += len({f"item-{row}" for row in rows} & {item.item_id for item in reply.items})
    return hits / (10 * len(names))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of process `pid` and its children (the workers of
    ``STREAMREC_SERVING_WORKERS``), from Linux /proc."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # fields[1]: the parent pid
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def load(call, concurrency: int, duration_s: float, warmup_s: float,  # type: ignore[no-untyped-def]
               server_pids: list[int]) -> dict[str, float]:
    """Latency percentiles, throughput and CPU per call (server and this client process)
    of `call` with `concurrency` calls in flight."""
    latencies: list[float] = []
    measuring = False
    stop_at = time.perf_counter() + warmup_s + duration_s
    started = 0.0

    async def worker(seed: int) -> None:
        n = seed
        while time.perf_counter() < stop_at:
            began = time.perf_counter()
            await call(n)
            if measuring:
                latencies.append(time.perf_counter() - began)
            n += concurrency

    server_cpu = client_cpu = 0.0

    async def switch() -> None:
        nonlocal measuring, started, server_cpu, client_cpu
        await asyncio.sleep(warmup_s)
        measuring, started = True, time.perf_counter()
        server_cpu, client_cpu = sum(map(cpu_seconds, server_pids)), time.process_time()

    await asyncio.gather(switch(), *(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    server_cpu = sum(map(cpu_seconds, server_pids)) - server_cpu
    client_cpu = time.process_time() - client_cpu
    ms = np.asarray(latencies) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "max_ms": round(float(ms.max()), 3), "qps": round(len(ms) / elapsed, 1), "calls": len(ms),
            "server_cpu_ms_per_call": round(1000 * server_cpu / len(ms), 3),
            "client_cpu_ms_per_call": round(1000 * client_cpu / len(ms), 3)}


async def measure(ports: list[int], server_pids: list[int], names: list[str], recall_names: list[str],
                  exact: np.ndarray, args: argparse.Namespace) -> dict[str, object]:
    # Each channel its own connections (a local subchannel pool): the kernel spreads
    # connections, not calls, over the workers of a multi-process server. Several replicas:
    # each channel balances round robin over all of them (contracts/channel.py).
    for port in ports:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_serving(channel, args.start_timeout)
    channels = [recommender_channel([f"127.0.0.1:{port}" for port in ports],
                                    options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(args.channels)]
    try:
        stubs = [recommender_pb2_grpc.RecommenderStub(channel) for channel in channels]
        echoes = [recommender_pb2_grpc.DiagnosticsStub(channel) for channel in channels]
        results: dict[str, object] = {"recall@10": round(await recall_at_10(stubs[0], recall_names, exact), 4)}
        requests = [recommender_pb2.RecommendRequest(user_id=name, k=10) for name in names]
        ping = recommender_pb2.EchoMessage(payload=b"x" * 32)

        async def recommend(n: int) -> None:
            reply = await stubs[n % len(stubs)].Recommend(requests[n % len(requests)], timeout=10)
            assert len(reply.items) == 10

        async def echo_call(n: int) -> None:
            await echoes[n % len(echoes)].Echo(ping, timeout=10)

        for concurrency in args.concurrency:
            row = {"echo": await load(echo_call, concurrency, args.duration, args.warmup, server_pids),
                   "recommend": await load(recommend, concurrency, args.duration, args.warmup, server_pids)}
            results[f"c{concurrency}"] = row
            print(f"c{concurrency}: {json.dumps(row)}", flush=True)
        return results
    finally:
        for channel in channels:
            await channel.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=DIM, help="vector dimension (384: the bootstrap model)")
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per point")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--channels", type=int, default=1,
                        help="client connections, calls spread over them (>= workers to reach every worker)")
    parser.add_argument("--concurrency", type=lambda text: [int(n) for n in text.split(",")],
                        default=[1, 8, 64], help="calls in flight, comma-separated (default 1,8,64)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="independent server processes, each on its own port, the client balancing")
    parser.add_argument("--start-timeout", type=float, default=900.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/streamrec-bench-serving"))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/serving.json")
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--server-env", action="append", default=[],
                        help="extra NAME=VALUE for the server, e.g. STREAMREC_SERVING_NPROBE=16")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    store, vectors, clusters = artifact(args.workdir, args.items, args.dim)
    rng = np.random.default_rng(1)
    users, seen = user_vectors(rng, vectors, clusters, args.users)
    recall_users, _ = user_vectors(rng, vectors, clusters, args.recall_queries)
    exact = exact_top(vectors, recall_users, 10)

    run = uuid.uuid4().hex[:8]
    prefix = f"srbench:{run}:"
    names = [f"user-{n}" for n in range(args.users)]
    recall_names = [f"recall-{n}" for n in range(args.recall_queries)]
    redis = Redis.from_url(args.redis)
    write_users(redis, prefix, users, seen, names)
    write_users(redis, prefix, recall_users, [[] for _ in recall_names], recall_names)
    redis.zadd(RedisKeys(prefix).popular(), {f"item-{n}": float(1000 - n) for n in range(1000)})
    topic_names = {name: f"{name}.bench-{run}" for name in
                   ("events", "items", "item-vectors", "recommendations")}
    asyncio.run(create_topics(args.kafka, topic_names))

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), STREAMREC_SERVING_PORT="0",
               STREAMREC_SERVING_ADMIN_PORT="0", STREAMREC_SERVING_ARTIFACT_DIR=str(store),
               STREAMREC_SERVING_DIM=str(args.dim), STREAMREC_SERVING_REDIS_PREFIX=prefix,
               STREAMREC_SERVING_KAFKA_BOOTSTRAP=args.kafka, STREAMREC_SERVING_REDIS_URL=args.redis,
               STREAMREC_SERVING_TOPIC_EVENTS=topic_names["events"],
               STREAMREC_SERVING_TOPIC_ITEMS=topic_names["items"],
               STREAMREC_SERVING_TOPIC_ITEM_VECTORS=topic_names["item-vectors"],
               STREAMREC_SERVING_TOPIC_ROUTING=f"model-routing.bench-{run}",  # serving creates it
               STREAMREC_SERVING_TOPIC_RECOMMENDATIONS=topic_names["recommendations"],
               STREAMREC_SERVING_LOG_LEVEL="info")
    env.update(item.split("=", 1) for item in args.server_env)
    started = time.monotonic()
    # Replicas one after the other: the later ones read the first one's index cache, if set.
    started_servers = [start_server(env, args.workdir / f"server-{run}-{n}.log", args.start_timeout)
                       for n in range(args.replicas)]
    servers = [server for server, _ in started_servers]
    listening_s = time.monotonic() - started
    try:
        results = asyncio.run(measure([port for _, port in started_servers], [s.pid for s in servers],
                                      names, recall_names, exact, args))
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            server.wait(timeout=60)
        asyncio.run(delete_topics(args.kafka, list(topic_names.values())))
        keys = list(redis.scan_iter(match=f"{prefix}*", count=10_000))
        for start in range(0, len(keys), 10_000):
            redis.delete(*keys[start:start + 10_000])
    summary = {"items": args.items, "dim": args.dim, **results,
               "setup": {"users": args.users, "recall_queries": args.recall_queries,
                         "duration_s": args.duration, "channels": args.channels, "replicas": args.replicas,
                         "server_listening_s": round(listening_s, 1),
                         "run_s": round(time.monotonic() - started, 1),
                         "server_env": args.server_env}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
