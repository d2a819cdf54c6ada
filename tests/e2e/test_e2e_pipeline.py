"""The whole pipeline, real end to end: Kafka -> streams worker -> Redis / item-vectors ->
gRPC server, both deployables as child processes (``python -m streams``, ``python -m
serving``) on a private namespace of the local Kafka and Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
import redis
from kafka import KafkaProducer

from bench.stack import LocalStack
from contracts.online import RedisKeys
from protos import events_pb2, recommender_pb2, recommender_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]

CATALOG = {
    "m1": ("Toy Story (1995)", ["Animation", "Children's", "Comedy"]),
    "m2": ("Aladdin (1992)", ["Animation", "Children's", "Musical"]),
    "m3": ("The Lion King (1994)", ["Animation", "Children's", "Musical"]),
    "m4": ("Alien (1979)", ["Horror", "Sci-Fi"]),
    "m5": ("Aliens (1986)", ["Action", "Horror", "Sci-Fi"]),
    "m6": ("The Thing (1982)", ["Horror", "Sci-Fi"]),
    "m7": ("Sense and Sensibility (1995)", ["Drama", "Romance"]),
    "m8": ("Pride and Prejudice (1940)", ["Drama", "Romance"]),
    "m9": ("Heat (1995)", ["Action", "Crime", "Thriller"]),
    "m10": ("Casino (1995)", ["Crime", "Drama"]),
}


def eventually(probe: Callable[[], T | None], stack: LocalStack, what: str,
               timeout_s: float = 90.0) -> T:
    """Call `probe` until it returns something other than None."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result is not None:
            return result
        stack.streams.check_alive()
        stack.serving.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not within {timeout_s} s\n--- streams\n{stack.streams.log_tail()}"
                f"\n--- serving\n{stack.serving.log_tail()}"
            )
        time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    local = LocalStack(kafka=kafka_bootstrap, redis_url=redis_url,
                       workdir=Path(tmp_path_factory.mktemp("stack")))
    with local.running():
        yield local


@pytest.fixture(scope="module")
def producer(kafka_bootstrap: str) -> Iterator[KafkaProducer]:
    client = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(stack: LocalStack) -> Iterator[recommender_pb2_grpc.RecommenderStub]:
    with grpc.insecure_channel(f"127.0.0.1:{stack.port}") as channel:
        yield recommender_pb2_grpc.RecommenderStub(channel)


def publish_item(producer: KafkaProducer, stack: LocalStack, item_id: str, title: str,
                 categories: list[str]) -> None:
    item = events_pb2.Item(item_id=item_id, title=title, categories=categories,
                           availability=events_pb2.IN_STOCK)
    producer.send(stack.topics["items"], key=item_id.encode(), value=item.SerializeToString())


def produce_event(producer: KafkaProducer, stack: LocalStack, event_id: str, user_id: str,
                  item_id: str, kind: int = events_pb2.PURCHASE) -> None:
    event = events_pb2.Event(event_id=event_id, user_id=user_id, item_id=item_id, type=kind,
                             timestamp_ms=int(time.time() * 1000))
    producer.send(stack.topics["events"], key=user_id.encode(), value=event.SerializeToString())
    producer.flush()


def similar_or_none(stub: recommender_pb2_grpc.RecommenderStub, item_id: str,
                    k: int) -> list[str] | None:
    try:
        answer = stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id=item_id, k=k),
                                   timeout=5)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return [item.item_id for item in answer.items]


@pytest.fixture(scope="module")
def catalog_loaded(stack: LocalStack, producer: KafkaProducer,
                   stub: recommender_pb2_grpc.RecommenderStub) -> None:
    for item_id, (title, categories) in CATALOG.items():
        publish_item(producer, stack, item_id, title, categories)
    producer.flush()
    for item_id in CATALOG:
        eventually(lambda i=item_id: similar_or_none(stub, i, 3), stack,
                   f"a vector for {item_id} in serving")


def recommend(stub: recommender_pb2_grpc.RecommenderStub, user_id: str,
              k: int) -> recommender_pb2.RecommendResponse:
    return stub.Recommend(recommender_pb2.RecommendRequest(user_id=user_id, k=k), timeout=5)


def test_an_event_on_kafka_changes_that_users_next_recommendation(
    stack: LocalStack, producer: KafkaProducer, stub: recommender_pb2_grpc.RecommenderStub,
    catalog_loaded: None,
) -> None:
    before = recommend(stub, "alice", 3)
    assert before.strategy == "popular"

    produce_event(producer, stack, "e-alice-1", "alice", "m4")  # Alien

    def personal() -> recommender_pb2.RecommendResponse | None:
        answer = recommend(stub, "alice", 3)
        return answer if answer.strategy == "personal" else None

    after = eventually(personal, stack, "a personal answer for alice")
    shown = [item.item_id for item in after.items]
    assert "m4" not in shown, "an item the user bought is never recommended back"
    assert set(shown) & {"m5", "m6"}, f"horror/sci-fi neighbours of Alien expected, got {shown}"
    assert after.model_version == before.model_version


def test_a_new_item_is_recommendable_without_a_restart(
    stack: LocalStack, producer: KafkaProducer, stub: recommender_pb2_grpc.RecommenderStub,
    catalog_loaded: None,
) -> None:
    produce_event(producer, stack, "e-bob-1", "bob", "m1")  # Toy Story
    eventually(lambda: (r := recommend(stub, "bob", 3)).strategy == "personal" or None, stack,
               "a personal answer for bob")

    publish_item(producer, stack, "m11", "Toy Story 2 (1999)", ["Animation", "Children's", "Comedy"])
    producer.flush()

    def shown_new_item() -> list[str] | None:
        items = [item.item_id for item in recommend(stub, "bob", 3).items]
        return items if "m11" in items else None

    items = eventually(shown_new_item, stack, "the new item m11 in bob's recommendations")
    assert items[0] == "m11", f"the sequel should be bob's best match, got {items}"


def run_training(stack: LocalStack, *command: str) -> str:
    """``python -m training <command>`` on the stack's topics and artifact store; returns
    the production version it leaves."""
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1",
        **stack.training_env(),
        "STREAMREC_TRAINING_TRAIN_TIME_BUDGET_S": "10",
        "STREAMREC_TRAINING_MAX_EPOCHS": "3",
        # a tiny log decides nothing: every candidate is promoted, the gate has its own tests
        "STREAMREC_TRAINING_GATE_MIN_GAIN": "-1",
    }
    done = subprocess.run([sys.executable, "-m", "training", *command], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"training {command} failed:\n{done.stdout}\n{done.stderr}"
    return str(json.loads((stack.artifact_dir / "production.json").read_text())["version"])


def test_a_retrain_is_promoted_picked_up_without_restart_and_rolled_back(
    stack: LocalStack, producer: KafkaProducer, stub: recommender_pb2_grpc.RecommenderStub,
    catalog_loaded: None, redis_url: str,
) -> None:
    items = list(CATALOG)
    users = [f"fan{n}" for n in range(8)]
    for n, user in enumerate(users):  # a few histories for the trainer to learn from
        for step in range(5):
            produce_event(producer, stack, f"e-{user}-{step}", user,
                          items[(n * 3 + step * (1 + n % 3)) % len(items)], events_pb2.VIEW)
    client = redis.Redis.from_url(redis_url)

    def version_of(user: str) -> str | None:
        raw = client.hget(RedisKeys(stack.redis_prefix).user_vector(user), "version")
        return raw.decode() if raw is not None else None

    eventually(lambda: all(version_of(u) == "base" for u in users) or None, stack,
               "base user vectors of every fan")

    def served_by(version: str) -> None:
        """Serving answers fans with `version` and personal vectors: streams has
        re-embedded them with that version, and the two never mix."""
        def answered() -> bool | None:
            answer = recommend(stub, users[0], 3)
            ok = (answer.model_version == version and answer.strategy == "personal"
                  and all(version_of(user) == version for user in users))
            return ok or None
        eventually(answered, stack, f"serving and streams on version {version}", timeout_s=180)

    first = run_training(stack, "run")
    assert first != "base"
    served_by(first)
    second = run_training(stack, "run")
    assert second not in ("base", first)
    served_by(second)
    assert run_training(stack, "rollback") == first
    served_by(first)
    client.close()
