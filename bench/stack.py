"""A private streamrec stack on the local Kafka and Redis: ``python -m streams`` and
``python -m serving`` as child processes with their own topics, consumer group, Redis
prefix and artifact store, so a benchmark or an end-to-end test never touches the
default ``events`` / ``sr:`` namespace (nor another run's).

Used by the benchmarks in this folder and by ``tests/e2e``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import redis
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from contracts.security import redis_client

REPO_ROOT = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(r"listening on [^ ]+:(\d+)")

TOPICS = ("events", "enriched", "dlq", "items", "item_vectors", "models", "relations")


def topic_names(suffix: str) -> dict[str, str]:
    """The stack's topic names, by setting name (``events``, ``enriched``, ...)."""
    base = {
        "events": "events",
        "enriched": "events.enriched",
        "dlq": "events.dlq",
        "items": "items",
        "item_vectors": "item-vectors",
        "models": "models",
        "relations": "relations",
    }
    return {name: f"{topic}-{suffix}" for name, topic in base.items()}


class Child:
    """One deployable as a child process logging to a file."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path) -> None:
        self.module = module
        self.env = env
        self.log_path = log_path
        self.python_args: list[str] = []  # e.g. ["-m", "cProfile", "-o", "out.prof"]
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, *self.python_args, "-m", self.module], cwd=REPO_ROOT,
                env=self.env,
                stdout=log, stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def check_alive(self) -> None:
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError(f"python -m {self.module} exited:\n{self.log_tail()}")

    def wait_for_log(self, pattern: re.Pattern[str] | str, timeout_s: float) -> re.Match[str]:
        """The first match of `pattern` in the log, waiting for it while the child runs."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout_s
        while True:
            found = regex.search(self.log())
            if found is not None:
                return found
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"python -m {self.module}: no {regex.pattern!r} in its log after "
                    f"{timeout_s:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
        if self._process is None:
            return None
        process, self._process = self._process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode


@dataclass
class LocalStack:
    """A streams worker and a gRPC server sharing one private namespace."""

    kafka: str
    redis_url: str
    workdir: Path
    suffix: str = field(default_factory=lambda: "s" + uuid.uuid4().hex[:10])
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    redis_prefix: str = ""  # default: stack-{suffix}: (a Redis ACL may want its own)

    def __post_init__(self) -> None:
        self.topics = topic_names(self.suffix)
        self.routing_topic = f"model-routing-{self.suffix}"  # created by serving, written by training too
        self.deletions_topic = f"deletions-{self.suffix}"  # written by serving, read by training
        self.redis_prefix = self.redis_prefix or f"stack-{self.suffix}:"
        self.artifact_dir = self.workdir / "artifacts"
        common = {**os.environ, "HF_HUB_OFFLINE": "1", **self.extra_env}
        streams_env = {
            **common,
            "STREAMREC_STREAMS_KAFKA_BOOTSTRAP": self.kafka,
            "STREAMREC_STREAMS_REDIS_URL": self.redis_url,
            "STREAMREC_STREAMS_REDIS_PREFIX": self.redis_prefix,
            "STREAMREC_STREAMS_APP_ID": f"streams-{self.suffix}",
            "STREAMREC_STREAMS_DATADIR": str(self.workdir / "streams-data"),
            "STREAMREC_STREAMS_ARTIFACT_DIR": str(self.artifact_dir),
            "STREAMREC_STREAMS_WEB_ENABLED": "false",
            **{f"STREAMREC_STREAMS_TOPIC_{k.upper()}": v for k, v in self.topics.items()},
        }
        serving_env = {
            **common,
            "STREAMREC_SERVING_KAFKA_BOOTSTRAP": self.kafka,
            "STREAMREC_SERVING_REDIS_URL": self.redis_url,
            "STREAMREC_SERVING_REDIS_PREFIX": self.redis_prefix,
            "STREAMREC_SERVING_ARTIFACT_DIR": str(self.artifact_dir),
            "STREAMREC_SERVING_PORT": "0",
            "STREAMREC_SERVING_CLIENT_ID": f"serving-{self.suffix}",
            "STREAMREC_SERVING_TOPIC_EVENTS": self.topics["events"],
            "STREAMREC_SERVING_TOPIC_ITEMS": self.topics["items"],
            "STREAMREC_SERVING_TOPIC_ITEM_VECTORS": self.topics["item_vectors"],
            "STREAMREC_SERVING_TOPIC_RELATIONS": self.topics["relations"],
            "STREAMREC_SERVING_TOPIC_ROUTING": self.routing_topic,
            "STREAMREC_SERVING_TOPIC_RELATIONS": self.topics["relations"],
            "STREAMREC_SERVING_TOPIC_DELETIONS": self.deletions_topic,
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.streams = Child("streams", streams_env, self.workdir / "streams.log")
        self.serving = Child("serving", serving_env, self.workdir / "serving.log")

    def training_env(self) -> dict[str, str]:
        """What ``python -m training`` needs to read this stack's log and catalog and to
        write and announce into its artifact store and topics."""
        return {
            "STREAMREC_TRAINING_KAFKA_BOOTSTRAP": self.kafka,
            "STREAMREC_TRAINING_TOPIC_ENRICHED": self.topics["enriched"],
            "STREAMREC_TRAINING_TOPIC_ITEMS": self.topics["items"],
            "STREAMREC_TRAINING_TOPIC_MODELS": self.topics["models"],
            "STREAMREC_TRAINING_TOPIC_ROUTING": self.routing_topic,
            "STREAMREC_TRAINING_TOPIC_ITEM_VECTORS": self.topics["item_vectors"],
            "STREAMREC_TRAINING_TOPIC_DELETIONS": self.deletions_topic,
            "STREAMREC_TRAINING_ARTIFACT_DIR": str(self.artifact_dir),
        }

    def start(self, timeout_s: float = 180.0) -> None:
        """Start the worker, wait until it is ready, then the server; sets `port`."""
        self.streams.start()
        self.streams.wait_for_log(r"Ready|\[\^Worker\]: Ready| OK \^", timeout_s)
        self.serving.start()
        self.port = int(self.serving.wait_for_log(_LISTENING, timeout_s).group(1))

    def stop(self, timeout_s: float = 30.0) -> dict[str, int | None]:
        """Stop both children (server first) and return their exit codes."""
        return {"serving": self.serving.stop(timeout_s), "streams": self.streams.stop(timeout_s)}

    def delete_state(self) -> None:
        """Delete the stack's topics (Faust's internal ones too) and Redis keys."""
        client = redis_client(self.redis_url, None)
        try:
            delete_keys(client, self.redis_prefix)
        finally:
            client.close()
        delete_topics(self.kafka, self.suffix)

    @contextmanager
    def running(self) -> Iterator[LocalStack]:
        """Started, then stopped (each child must exit 0) and its state deleted."""
        try:
            self.start()
            yield self
        finally:
            codes = self.stop()
            self.delete_state()
        assert codes == {"serving": 0, "streams": 0}, codes


def delete_keys(client: redis.Redis, prefix: str) -> None:
    """Every Redis key under `prefix`."""
    names = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if names:
        client.delete(*names)


def delete_topics(kafka: str, suffix: str) -> None:
    """Every topic whose name holds `suffix` (Faust's internal ones too, named after the
    app id); a broker that is gone leaves nothing to delete."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=kafka)
    except KafkaError:
        return
    try:
        mine = [name for name in admin.list_topics() if suffix in name]
        if mine:
            admin.delete_topics(mine)
    except KafkaError:
        pass
    finally:
        admin.close()


def catalog_time_ms(store: Path | None) -> int:
    """When the bench's catalog records say the items last changed: now, or with an
    artifact store, just before its production version was made (the catalog that
    version was trained on). An item record newer than the version could have another
    text, so the worker would embed it again with the text encoder alone and drop the
    version's trained vector: the whole catalog, on the worker's CPU, during the run."""
    if store is None:
        return int(time.time() * 1000)
    version = json.loads((store / "production.json").read_text())["version"]
    manifest = json.loads((store / version / "manifest.json").read_text())
    return int(datetime.fromisoformat(manifest["created_at"]).timestamp() * 1000) - 1000
