"""A streams worker as a child process, and readers of its topics, for integration tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from contracts.online import RedisKeys
from protos import events_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


class StreamsWorker:
    """``python -m streams`` as a child process with its own topics, group and Redis prefix."""

    def __init__(self, *, kafka: str, redis_url: str, suffix: str, workdir: Path) -> None:
        self.suffix = suffix
        self.topics = {
            "events": f"events-{suffix}",
            "enriched": f"events.enriched-{suffix}",
            "dlq": f"events.dlq-{suffix}",
            "items": f"items-{suffix}",
            "item_vectors": f"item-vectors-{suffix}",
            "models": f"models-{suffix}",
            "relations": f"relations-{suffix}",
        }
        self.redis_prefix = f"test-{suffix}:"
        self.keys = RedisKeys(self.redis_prefix)
        self.log_path = workdir / "worker.log"
        self.env = {
            **os.environ,
            "STREAMREC_STREAMS_KAFKA_BOOTSTRAP": kafka,
            "STREAMREC_STREAMS_REDIS_URL": redis_url,
            "STREAMREC_STREAMS_REDIS_PREFIX": self.redis_prefix,
            "STREAMREC_STREAMS_APP_ID": f"streams-test-{suffix}",
            "STREAMREC_STREAMS_DATADIR": str(workdir / "data"),
            "STREAMREC_STREAMS_ARTIFACT_DIR": str(workdir / "artifacts"),
            "STREAMREC_STREAMS_WEB_ENABLED": "false",
            "STREAMREC_STREAMS_METRICS_PORT": "0",  # any free port, read from the log
            "STREAMREC_STREAMS_METRICS_HOST": "127.0.0.1",
            **{
                f"STREAMREC_STREAMS_TOPIC_{name.upper()}": topic
                for name, topic in self.topics.items()
            },
        }
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self, timeout_s: float = 120.0) -> float:
        """Start and wait until the worker reports ready; returns the seconds it took."""
        started = time.monotonic()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "streams"], cwd=REPO_ROOT, env=self.env,
                stdout=log, stderr=subprocess.STDOUT,
            )
        while "Ready" not in self.log_since_start() and " OK ^" not in self.log_since_start():
            self.check_alive()
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"worker not ready after {timeout_s} s:\n{self.log_tail()}")
            time.sleep(0.2)
        return time.monotonic() - started

    def metrics_url(self) -> str:
        found = re.search(r"metrics on (http://\S+/metrics)", self.log_since_start())
        assert found, f"the worker logged no metrics address:\n{self.log_tail()}"
        return found.group(1)

    def log_since_start(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def check_alive(self) -> None:
        if self._process is None or self._process.poll() is not None:
            raise AssertionError(f"the worker exited:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind, as in a crash."""
        if self._process is None:
            return
        process, self._process = self._process, None
        process.kill()
        process.wait()

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 30 s; returns the exit code."""
        if self._process is None:
            return None
        process, self._process = self._process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode


def eventually(probe: Callable[[], T | None], worker: StreamsWorker, what: str,
               timeout_s: float = 60.0, every_s: float = 0.05) -> T:
    """Call `probe` until it returns something other than None, while the worker lives."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found is not None:
            return found
        worker.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout_s} s:\n{worker.log_tail()}")
        time.sleep(every_s)


class TopicLog:
    """Every committed record of one topic, read from the beginning as it grows."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", isolation_level="read_committed",
        )
        partitions = self._consumer.partitions_for_topic(topic) or set()
        assert partitions, f"topic {topic} does not exist"
        self._consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        self._consumer.seek_to_beginning()
        self.records: list[ConsumerRecord] = []

    def poll(self) -> None:
        for batch in self._consumer.poll(timeout_ms=200).values():
            self.records.extend(batch)

    def wait_for(
        self, found: Callable[[list[ConsumerRecord]], T | None], worker: StreamsWorker,
        timeout_s: float = 60.0, what: str = "records",
    ) -> T:
        """Poll until `found` returns something other than None (or fail after the timeout)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll()
            result = found(self.records)
            if result is not None:
                return result
            worker.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} after {timeout_s} s:\n{worker.log_tail()}")

    def close(self) -> None:
        self._consumer.close()


@dataclass
class Running:
    """A started worker with producers and readers on its topics."""

    worker: StreamsWorker
    producer: KafkaProducer
    logs: dict[str, TopicLog]
    redis: redis.Redis
    startup_s: float

    def send(self, topic: str, key: str | bytes | None, value: bytes,
             partition: int | None = None) -> tuple[int, int]:
        """Produce one record and return its (partition, offset)."""
        raw_key = key.encode() if isinstance(key, str) else key
        metadata = self.producer.send(self.worker.topics[topic], key=raw_key, value=value,
                                      partition=partition).get(30)
        return metadata.partition, metadata.offset

    def send_all(
        self, topic: str, records: list[tuple[bytes | None, bytes]]
    ) -> list[tuple[int, int]]:
        """Produce (key, value) records in one go; their (partition, offset), in order."""
        futures = [self.producer.send(self.worker.topics[topic], key=key, value=value)
                   for key, value in records]
        self.producer.flush(30)
        return [(m.partition, m.offset) for m in (future.get(30) for future in futures)]

    def outcomes(self, sent: set[tuple[int, int]]) -> dict[tuple[int, int], list[str]]:
        """Outcome(s) of each sent (partition, offset) of events read so far: "accepted"
        or the dead-letter reason, read committed."""
        found: dict[tuple[int, int], list[str]] = {}
        for record in self.logs["enriched"].records:
            enriched = events_pb2.EnrichedEvent.FromString(record.value)
            where = (enriched.source_partition, enriched.source_offset)
            if where in sent:
                found.setdefault(where, []).append("accepted")
        for record in self.logs["dlq"].records:
            letter = events_pb2.DeadLetter.FromString(record.value)
            where = (letter.origin_partition, letter.origin_offset)
            if letter.origin_topic == self.worker.topics["events"] and where in sent:
                found.setdefault(where, []).append(letter.reason)
        return found


def publish_items(running: Running, tag: str, n: int) -> list[str]:
    """`n` items named after `tag`, waiting until the worker has embedded them all."""
    items = [f"{tag}-item-{k}" for k in range(n)]
    for k, item_id in enumerate(items):
        running.send("items", item_id, events_pb2.Item(item_id=item_id, title=f"Film {k}")
                     .SerializeToString())

    def embedded(records: list[ConsumerRecord]) -> bool | None:
        ids = {events_pb2.ItemVector.FromString(r.value).item_id for r in records}
        return True if ids.issuperset(items) else None

    running.logs["item_vectors"].wait_for(embedded, running.worker, what="item vectors")
    return items


def outputs(running: Running, tag: str, *, enriched: int, dead: int) -> tuple[list, list]:
    """Wait for at least that many enriched events and dead letters of the tag's users."""
    prefix = f"{tag}-".encode()

    def found(_: list[ConsumerRecord]) -> tuple[list, list] | None:
        running.logs["dlq"].poll()
        mine_enriched = [events_pb2.EnrichedEvent.FromString(r.value)
                         for r in running.logs["enriched"].records if r.key.startswith(prefix)]
        mine_dead = [events_pb2.DeadLetter.FromString(r.value)
                     for r in running.logs["dlq"].records if r.key.startswith(prefix)]
        done = len(mine_enriched) >= enriched and len(mine_dead) >= dead
        return (mine_enriched, mine_dead) if done else None

    return running.logs["enriched"].wait_for(found, running.worker, timeout_s=120,
                                             what=f"outputs of {tag}")


def committed_records(bootstrap: str, topic: str) -> list[tuple[bytes, bytes | None]]:
    """(key, value) of every committed record of `topic`, each partition in order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, isolation_level="read_committed")
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records: list[tuple[bytes, bytes | None]] = []
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for batch in consumer.poll(timeout_ms=500).values():
                records += [(r.key, r.value) for r in batch]
        return records
    finally:
        consumer.close()
