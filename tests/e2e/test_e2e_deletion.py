"""A user's deletion through the whole pipeline: `python -m serving.cli.admin delete-user`
on a running server, the streams worker carrying it out (online state gone), the user
coming back as a new user, and the next training run's data set without their earlier
events but with the later one."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer

from bench.stack import LocalStack
from contracts.online import RedisKeys
from protos import events_pb2
from training.job import read_log_and_catalog
from training.settings import TrainingSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ITEMS = {"m1": "Toy Story (1995)", "m2": "Heat (1995)", "m3": "Alien (1979)"}


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[LocalStack]:
    local = LocalStack(kafka=kafka_bootstrap, redis_url=redis_url,
                       workdir=Path(tmp_path_factory.mktemp("deletion")),
                       extra_env={"STREAMREC_SERVING_ADMIN_PORT": "0"})
    with local.running():
        yield local


def _eventually(check, stack: LocalStack, what: str, timeout_s: float = 90.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        stack.streams.check_alive()
        stack.serving.check_alive()
        assert time.monotonic() < deadline, f"{what}\n{stack.streams.log_tail()}"
        time.sleep(0.1)


def _event(producer: KafkaProducer, stack: LocalStack, user: str, item: str, n: int) -> None:
    event = events_pb2.Event(event_id=f"{user}-{n}", user_id=user, item_id=item,
                             type=events_pb2.VIEW, timestamp_ms=int(time.time() * 1000))
    producer.send(stack.topics["events"], key=user.encode(), value=event.SerializeToString())
    producer.flush()


def _log(stack: LocalStack) -> list[tuple[str, str]]:
    settings = TrainingSettings(kafka_bootstrap=stack.kafka, topic_enriched=stack.topics["enriched"],
                                topic_items=stack.topics["items"],
                                topic_deletions=stack.deletions_topic, read_timeout_s=30)
    consumer = KafkaConsumer(bootstrap_servers=stack.kafka, group_id=None,
                             enable_auto_commit=False, isolation_level="read_committed")
    try:
        events, _ = read_log_and_catalog(settings, consumer, progress=False)
    finally:
        consumer.close()
    return list(zip(events.user_ids, events.item_ids, strict=True))


def test_a_user_deleted_with_the_admin_cli_is_gone_and_left_out_of_the_next_training_set(
    stack: LocalStack, redis_url: str,
) -> None:
    producer = KafkaProducer(bootstrap_servers=stack.kafka, acks="all", linger_ms=0)
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys(stack.redis_prefix)
    try:
        for item_id, title in ITEMS.items():
            producer.send(stack.topics["items"], key=item_id.encode(),
                          value=events_pb2.Item(item_id=item_id, title=title).SerializeToString())
        _event(producer, stack, "gone", "m1", 0)
        _event(producer, stack, "gone", "m2", 1)
        _event(producer, stack, "stays", "m1", 0)
        _eventually(lambda: client.exists(keys.seen("gone"), keys.seen("stays")) == 2, stack,
                    "both users' online state")
        _eventually(lambda: len(_log(stack)) == 3, stack, "the event log")

        admin_port = re.search(r"\(admin (\d+),", stack.serving.log()).group(1)  # type: ignore[union-attr]
        done = subprocess.run([sys.executable, "-m", "serving.cli.admin", "--target",
                               f"127.0.0.1:{admin_port}", "delete-user", "gone"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith("deletion of user gone requested")
        _eventually(lambda: client.exists(keys.seen("gone"), keys.user_vector("gone"),
                                          keys.acts(events_pb2.VIEW, "gone")) == 0, stack,
                    "the deleted user's online state gone")
        assert client.exists(keys.seen("stays")) == 1

        time.sleep(0.01)  # the returning user's event comes after the deletion's time
        _event(producer, stack, "gone", "m3", 2)
        _eventually(lambda: [m.decode() for m in client.zrange(keys.seen("gone"), 0, -1)] == ["m3"],  # type: ignore[union-attr]
                    stack, "the returning user starts anew")
        _eventually(lambda: len(_log(stack)) == 2, stack, "the returning user's event in the log")
        assert sorted(_log(stack)) == [("gone", "m3"), ("stays", "m1")]
    finally:
        producer.close()
        client.close()
