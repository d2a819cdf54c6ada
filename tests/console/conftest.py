"""A real stack for the console's tests: the streams worker and the gRPC server on a private
namespace of the local Kafka and Redis, a slice of MovieLens-1M (its most rated films and
their earliest ratings) loaded and replayed through ``python -m ingest``, two versions
trained on it (the pretrained encoder's, then a fine-tuned one: production, with the first
as previous), and ``python -m console`` in front.

The browser is Debian's ``chromium`` (installed by scripts/setup.sh), driven by
Playwright without a browser download of its own."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
import redis

from bench.stack import REPO_ROOT, Child, LocalStack
from console.figures import Samples, parse
from contracts.online import RedisKeys
from protos import recommender_pb2, recommender_pb2_grpc

T = TypeVar("T")
REPLAYED = 2500  # MovieLens-1M ratings replayed as events,
MOVIES = 150  # on its most rated films
TOKEN = "console-test-token"
CHROMIUM = os.environ.get("STREAMREC_TEST_CHROMIUM", "/usr/bin/chromium")
_SERVING_PORTS = re.compile(r"listening on [^ ]+:\d+ \(admin (\d+), metrics (\d+)\)")
_STREAMS_METRICS = re.compile(r"metrics on (http://[^ ]+/metrics)")
_CONSOLE = re.compile(r"console on (http://[^ /]+/)")


@dataclass
class ConsoleStack:
    """The stack, the console in front of it, and the ways a test checks what it shows."""

    stack: LocalStack
    console: Child
    url: str
    admin_target: str
    streams_metrics: str
    serving_metrics: str
    trained: str  # the newer fine-tuned version, production after the setup

    def scrape(self, url: str) -> Samples:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return parse(answer.read().decode())

    def admin_status(self) -> recommender_pb2.ModelStatus:
        with grpc.insecure_channel(self.admin_target) as channel:
            return recommender_pb2_grpc.AdminStub(channel).Status(
                recommender_pb2.StatusRequest(), timeout=10)

    def recommender(self) -> recommender_pb2_grpc.RecommenderStub:
        return recommender_pb2_grpc.RecommenderStub(
            grpc.insecure_channel(f"127.0.0.1:{self.stack.port}"))

    def eventually(self, probe: Callable[[], T | None], what: str, timeout_s: float = 120.0) -> T:
        deadline = time.monotonic() + timeout_s
        while True:
            result = probe()
            if result is not None:
                return result
            for child in (self.stack.streams, self.stack.serving, self.console):
                child.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout_s} s\n--- console\n"
                                     f"{self.console.log_tail()}\n--- streams\n"
                                     f"{self.stack.streams.log_tail()}")
            time.sleep(0.2)


def _run(module: str, *args: str, env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{module} {args} failed:\n{done.stdout}\n{done.stderr}"


def _movielens_slice(directory: Path) -> tuple[Path, Path]:
    """The earliest `REPLAYED` MovieLens-1M ratings of its `MOVIES` most rated films, and
    those films, as the CSV files ``ingest`` reads: real data, small enough to embed and
    train on in a test."""
    from ingest.movielens import load

    data = load()
    ratings = data.interactions
    films = ratings["item_id"].value_counts().index[:MOVIES]
    kept = ratings[ratings["item_id"].isin(films)].head(REPLAYED)
    items = data.items[data.items["item_id"].isin(films)].copy()
    items["categories"] = items["categories"].map("|".join)
    interactions_csv, items_csv = directory / "ratings.csv", directory / "movies.csv"
    kept[["user_id", "item_id", "timestamp_ms", "event_type", "value"]].to_csv(interactions_csv,
                                                                               index=False)
    items[["item_id", "title", "description", "categories"]].to_csv(items_csv, index=False)
    return interactions_csv, items_csv


def _replay(stack: LocalStack) -> None:
    interactions, items = _movielens_slice(stack.workdir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "STREAMREC_INGEST_KAFKA_BOOTSTRAP": stack.kafka,
           "STREAMREC_INGEST_TOPIC_EVENTS": stack.topics["events"],
           "STREAMREC_INGEST_TOPIC_ITEMS": stack.topics["items"]}
    _run("ingest", "catalog", "--items", str(items), "--no-progress", env=env)
    _run("ingest", "replay", "--interactions", str(interactions), "--items", str(items),
         "--name", "ml-1m", "--speedup", "0", "--rate", "500", "--skip-catalog", "--no-progress",
         env=env)


def _train(stack: LocalStack, trainer: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           **stack.training_env(),
           "STREAMREC_TRAINING_TRAINER": trainer,
           "STREAMREC_TRAINING_TRAIN_TIME_BUDGET_S": "20",
           "STREAMREC_TRAINING_MAX_EPOCHS": "6",  # a few epochs: a loss curve to draw
           # a small slice decides nothing: the version is promoted, the gate has its own tests
           "STREAMREC_TRAINING_GATE_MIN_GAIN": "-1"}
    _run("training", "run", env=env)
    return str(json.loads((stack.artifact_dir / "production.json").read_text())["version"])


def _wait_handled(stack: LocalStack, metrics_url: str, count: int, timeout_s: float = 300) -> None:
    """Until the worker has enriched or dead-lettered `count` events."""
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(metrics_url, timeout=10) as answer:
            samples = parse(answer.read().decode())
        handled = sum(samples.get("streams_events_enriched_total", {}).values()) + sum(
            samples.get("streams_events_dead_lettered_total", {}).values())
        if handled >= count:
            return
        stack.streams.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{handled} of {count} events handled after {timeout_s} s:\n"
                                 f"{stack.streams.log_tail()}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def chromium() -> str:
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        pytest.skip(f"no Chromium at {CHROMIUM}: scripts/setup.sh installs Debian's `chromium`")
    return CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))


@pytest.fixture(scope="module")
def console_stack(kafka_bootstrap: str, redis_url: str, chromium: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    workdir = Path(tmp_path_factory.mktemp("console-stack"))
    suffix = "s" + uuid.uuid4().hex[:10]
    stack = LocalStack(kafka=kafka_bootstrap, redis_url=redis_url, workdir=workdir, suffix=suffix,
                       extra_env={
        "STREAMREC_SERVING_TOPIC_RECOMMENDATIONS": f"recommendations-{suffix}",
        "STREAMREC_SERVING_ADMIN_PORT": "0", "STREAMREC_SERVING_METRICS_PORT": "0",
        "STREAMREC_STREAMS_METRICS_PORT": "0", "STREAMREC_STREAMS_METRICS_HOST": "127.0.0.1",
        # MovieLens' ratings are years old: a dedupe window that covers them
        "STREAMREC_STREAMS_DEDUPE_WINDOW_S": "94608000",
    })
    console: Child | None = None
    try:
        stack.start()
        admin_port, serving_metrics_port = stack.serving.wait_for_log(_SERVING_PORTS, 60).groups()
        streams_metrics = stack.streams.wait_for_log(_STREAMS_METRICS, 60).group(1)
        # the console first: its charts show the replay and the model switches
        console = Child("console", {
            **os.environ,
            "STREAMREC_CONSOLE_PORT": "0",
            "STREAMREC_CONSOLE_TOKEN": TOKEN,
            "STREAMREC_CONSOLE_SERVING_TARGET": f"127.0.0.1:{stack.port}",
            "STREAMREC_CONSOLE_ADMIN_TARGET": f"127.0.0.1:{admin_port}",
            "STREAMREC_CONSOLE_SERVING_METRICS_URL": f"http://127.0.0.1:{serving_metrics_port}/metrics",
            "STREAMREC_CONSOLE_STREAMS_METRICS_URL": streams_metrics,
            "STREAMREC_CONSOLE_SAMPLE_INTERVAL_S": "1",
            "STREAMREC_CONSOLE_HISTORY_POINTS": "900",
            "STREAMREC_CONSOLE_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "STREAMREC_CONSOLE_TOPIC_DLQ": stack.topics["dlq"],
            "STREAMREC_CONSOLE_TOPIC_ITEMS": stack.topics["items"],
            "STREAMREC_CONSOLE_TOPIC_RECOMMENDATIONS": f"recommendations-{suffix}",
            "STREAMREC_CONSOLE_TOPIC_ENRICHED": stack.topics["enriched"],
            "STREAMREC_CONSOLE_STREAMS_APP_ID": f"streams-{stack.suffix}",
            "STREAMREC_CONSOLE_REDIS_URL": redis_url,
            "STREAMREC_CONSOLE_REDIS_PREFIX": stack.redis_prefix,
            "STREAMREC_CONSOLE_ARTIFACT_DIR": str(stack.artifact_dir),
        }, workdir / "console.log")
        console.start()
        url = console.wait_for_log(_CONSOLE, 60).group(1)
        _replay(stack)
        _wait_handled(stack, streams_metrics, REPLAYED)
        _train(stack, "pretrained")
        trained = _train(stack, "finetune")  # production, the first previous to roll back to
        yield ConsoleStack(stack=stack, console=console, url=url,
                           admin_target=f"127.0.0.1:{admin_port}", streams_metrics=streams_metrics,
                           serving_metrics=f"http://127.0.0.1:{serving_metrics_port}/metrics",
                           trained=trained)
    finally:
        console_code = console.stop() if console is not None else 0
        codes = stack.stop()
        stack.delete_state()
    assert codes == {"serving": 0, "streams": 0} and console_code == 0, (codes, console_code)


@pytest.fixture(scope="module")
def known_user(console_stack: ConsoleStack, redis_url: str) -> str:
    """A replayed user with a personal vector in Redis."""
    head, tail = RedisKeys(console_stack.stack.redis_prefix).user_vectors
    client = redis.Redis.from_url(redis_url)
    try:
        keys = console_stack.eventually(
            lambda: list(client.scan_iter(match=f"{head}*", count=1000)) or None,
            "user vectors in Redis")
    finally:
        client.close()
    first = sorted(k.decode() for k in keys)[0]
    return first[len(head):len(first) - len(tail)]


@pytest.fixture(scope="module")
def known_item(console_stack: ConsoleStack, known_user: str, redis_url: str) -> str:
    """An item the known user acted on: one every trained version has a vector of."""
    client = redis.Redis.from_url(redis_url)
    try:
        newest = client.zrevrange(RedisKeys(console_stack.stack.redis_prefix).seen(known_user), 0, 0)
    finally:
        client.close()
    assert newest, f"no recent items of {known_user}"
    return str(newest[0].decode())
