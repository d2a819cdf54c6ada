"""The pipeline over a secured Kafka and Redis, as a managed cluster has them: SCRAM over
TLS with ACLs on the broker (``infra.sh secure-up``), TLS and ACL users on Redis. Each
deployable (streams, serving, training, and ingest's producer) runs as its own user with
exactly the ACLs docs/security.md lists for this run's names; an event produced with
SCRAM over TLS changes that user's next Recommend; a wrong password stops start-up in one
line; no password is ever in a log."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import grpc
import pytest
import redis
from kafka import KafkaProducer

from bench.stack import LocalStack
from contracts.online import RedisKeys
from contracts.security import kafka_kwargs, redis_kwargs
from ingest.settings import IngestSettings
from protos import events_pb2, recommender_pb2, recommender_pb2_grpc
from serving.settings import ServingSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SECURE = ROOT / "var/secure"
CA = SECURE / "certs/ca.pem"
KAFKA = "127.0.0.1:" + os.environ.get("KAFKA_SECURE_PORT", "9192")
REDIS = "rediss://127.0.0.1:" + os.environ.get("REDIS_TLS_PORT", "6390") + "/0"
ITEMS = {
    "m1": ("Toy Story (1995)", ["Animation", "Children's", "Comedy"]),
    "m2": ("Aladdin (1992)", ["Animation", "Children's", "Musical"]),
    "m4": ("Alien (1979)", ["Horror", "Sci-Fi"]),
    "m5": ("Aliens (1986)", ["Action", "Horror", "Sci-Fi"]),
    "m6": ("The Thing (1982)", ["Horror", "Sci-Fi"]),
    "m7": ("Sense and Sensibility (1995)", ["Drama", "Romance"]),
}


def _acls() -> ModuleType:
    spec = importlib.util.spec_from_file_location("acls", ROOT / "scripts/kafka/acls.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["acls"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def infra(command: str) -> None:
    done = subprocess.run(["bash", str(ROOT / "scripts/infra.sh"), command], cwd=ROOT,
                          env={**os.environ, "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"infra.sh {command}:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def passwords() -> Iterator[dict[str, str]]:
    """The secured pair up for this module (down after it); the users' passwords."""
    infra("secure-up")
    try:
        lines = (SECURE / "credentials.env").read_text().split()
        yield {name.removesuffix("_PASSWORD").lower(): value
               for name, value in (line.split("=", 1) for line in lines)}
    finally:
        infra("secure-down")


def security_env(prefix: str, user: str, password: str, *, redis_user: bool) -> dict[str, str]:
    """The variables one deployable connects with (one example per setting: README)."""
    env = {
        f"{prefix}KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        f"{prefix}KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        f"{prefix}KAFKA_SASL_USERNAME": user,
        f"{prefix}KAFKA_SASL_PASSWORD": password,
        f"{prefix}KAFKA_SSL_CAFILE": str(CA),
    }
    if redis_user:
        env.update({f"{prefix}REDIS_USERNAME": user, f"{prefix}REDIS_PASSWORD": password,
                    f"{prefix}REDIS_SSL_CA_CERTS": str(CA)})
    return env


@pytest.fixture(scope="module")
def stack(passwords: dict[str, str], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[LocalStack]:
    suffix = "s" + uuid.uuid4().hex[:10]
    local = LocalStack(
        kafka=KAFKA, redis_url=REDIS, workdir=Path(tmp_path_factory.mktemp("secured")),
        suffix=suffix, redis_prefix=f"sr:{suffix}:",  # inside the users' Redis key pattern
        extra_env={
            **security_env("STREAMREC_STREAMS_", "streams", passwords["streams"], redis_user=True),
            **security_env("STREAMREC_SERVING_", "serving", passwords["serving"], redis_user=True),
        })
    acls = _acls()
    names = acls.Names(**{key: local.topics[key] for key in
                          ("events", "enriched", "dlq", "items", "item_vectors", "models",
                           "relations")},
                       routing=local.routing_topic, recommendations="recommendations",
                       deletions=local.deletions_topic, streams_app_id=f"streams-{suffix}",
                       serving_client_id=f"serving-{suffix}")
    admin = acls.admin_client(KAFKA, str(CA), passwords["admin"], 60)
    try:
        acls.grant(admin, acls.plan(names))
    finally:
        admin.close()
    try:
        local.start()
        yield local
    finally:
        # Over TLS, a client's close waits for its connections to close cleanly; one
        # stop of serving was seen to take past the default 30 s. It must still exit 0.
        codes = local.stop(timeout_s=90)
    assert codes == {"serving": 0, "streams": 0}, codes


@pytest.fixture(scope="module")
def producer(passwords: dict[str, str]) -> Iterator[KafkaProducer]:
    """A shop's backend: produces as the ingest user, SCRAM-SHA-512 over TLS."""
    settings = IngestSettings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="ingest", kafka_sasl_password=passwords["ingest"],
        kafka_ssl_cafile=CA)
    client = KafkaProducer(bootstrap_servers=KAFKA, acks="all", **kafka_kwargs(settings))
    yield client
    client.close()


def eventually(probe, stack: LocalStack, what: str, timeout_s: float = 90.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while (result := probe()) is None:
        stack.streams.check_alive()
        stack.serving.check_alive()
        assert time.monotonic() < deadline, (
            f"{what}: not within {timeout_s} s\n--- streams\n{stack.streams.log_tail()}"
            f"\n--- serving\n{stack.serving.log_tail()}")
        time.sleep(0.1)
    return result


def test_an_event_over_scram_and_tls_changes_the_next_recommend(
    stack: LocalStack, producer: KafkaProducer, passwords: dict[str, str],
) -> None:
    for item_id, (title, categories) in ITEMS.items():
        item = events_pb2.Item(item_id=item_id, title=title, categories=categories,
                               availability=events_pb2.IN_STOCK)
        producer.send(stack.topics["items"], key=item_id.encode(), value=item.SerializeToString())
    producer.flush()
    with grpc.insecure_channel(f"127.0.0.1:{stack.port}") as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)

        def recommend() -> recommender_pb2.RecommendResponse:
            return stub.Recommend(recommender_pb2.RecommendRequest(user_id="alice", k=3), timeout=5)

        def similar(item_id: str) -> list[str] | None:
            try:
                return list(stub.SimilarItems(recommender_pb2.SimilarItemsRequest(
                    item_id=item_id, k=3), timeout=5).items)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                raise

        for item_id in ITEMS:  # embedded by streams, read from item-vectors by serving
            eventually(lambda i=item_id: similar(i), stack, f"a vector for {item_id}")
        assert recommend().strategy == "popular"
        event = events_pb2.Event(event_id="e-alice-1", user_id="alice", item_id="m4",
                                 type=events_pb2.PURCHASE, timestamp_ms=int(time.time() * 1000))
        producer.send(stack.topics["events"], key=b"alice", value=event.SerializeToString())
        producer.flush()
        after = eventually(lambda: r if (r := recommend()).strategy == "personal" else None,
                           stack, "a personal answer for alice")
    shown = [item.item_id for item in after.items]
    assert "m4" not in shown and set(shown) & {"m5", "m6"}, shown

    # The online state is in the TLS Redis, under the prefix the ACL users may touch.
    serving = ServingSettings(redis_username="admin", redis_password=passwords["admin"],
                              redis_ssl_ca_certs=CA)
    client = redis.Redis.from_url(REDIS, **redis_kwargs(REDIS, serving))
    try:
        assert client.exists(RedisKeys(stack.redis_prefix).user_vector("alice"))
        client.delete(*client.scan_iter(match=f"{stack.redis_prefix}*"))
    finally:
        client.close()

    # No password in any log of the run.
    logs = stack.streams.log() + stack.serving.log()
    assert "Ready" in stack.streams.log()
    for user, password in passwords.items():
        assert password not in logs, f"{user}'s password is in a log"


def test_the_trainer_reads_the_log_and_announces_as_its_own_user(
    stack: LocalStack, passwords: dict[str, str],
) -> None:
    # After the first test (file order): the log has an event, the catalog its items.
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1",
        **security_env("STREAMREC_TRAINING_", "training", passwords["training"], redis_user=False),
        **stack.training_env(),
        "STREAMREC_TRAINING_TRAINER": "pretrained",
    }
    done = subprocess.run([sys.executable, "-m", "training", "run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert (stack.artifact_dir / "production.json").exists()
    assert not any(password in output for password in passwords.values())
    # The manifest keeps the run's settings: the password shows as SecretStr's mask.
    for path in stack.artifact_dir.rglob("*.json"):
        text = path.read_text()
        assert not any(password in text for password in passwords.values()), path


def test_a_deletion_commits_and_is_carried_out_as_the_deployables_own_users(
    stack: LocalStack, passwords: dict[str, str],
) -> None:
    # An edge of bob's, as the social worker keeps it: its tombstone is streams' to write.
    admin = ServingSettings(redis_username="admin", redis_password=passwords["admin"],
                            redis_ssl_ca_certs=CA)
    client = redis.Redis.from_url(REDIS, **redis_kwargs(REDIS, admin))
    following = RedisKeys(stack.redis_prefix).following("bob")
    try:
        client.hset(following, "carol", 1)
        port = re.search(r"\(admin (\d+),", stack.serving.log())
        assert port is not None, stack.serving.log_tail()
        with grpc.insecure_channel(f"127.0.0.1:{port.group(1)}") as channel:
            reply = recommender_pb2_grpc.AdminStub(channel).DeleteUser(
                recommender_pb2.DeleteUserRequest(user_id="bob"), timeout=60)
        assert reply.user_id == "bob" and reply.requested_at_ms > 0
        eventually(lambda: True if not client.exists(following) else None, stack,
                   "bob's edge removed by streams")
        eventually(lambda: True if "user bob deleted: no state held, 1 edges" in
                   stack.streams.log() else None, stack, "the deletion's log line")
    finally:
        client.close()


@pytest.mark.parametrize("module", ["serving", "streams"])
def test_a_wrong_redis_password_stops_start_up_in_one_line(
    module: str, passwords: dict[str, str], tmp_path: Path,
) -> None:
    prefix = f"STREAMREC_{module.upper()}_"
    wrong = "not-" + passwords[module]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", f"{prefix}KAFKA_BOOTSTRAP": KAFKA,
           f"{prefix}REDIS_URL": REDIS, f"{prefix}ARTIFACT_DIR": str(tmp_path),
           **security_env(prefix, module, passwords[module], redis_user=True),
           f"{prefix}REDIS_PASSWORD": wrong}
    done = subprocess.run([sys.executable, "-m", module], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    named = [line for line in output.splitlines() if f"{prefix}REDIS_PASSWORD" in line]
    assert len(named) == 1 and "Traceback" not in output and wrong not in output, output


@pytest.mark.parametrize(("module", "prefix", "args"), [
    ("serving", "STREAMREC_SERVING_", []),
    ("streams", "STREAMREC_STREAMS_", []),
    ("ingest", "STREAMREC_INGEST_", ["topics", "fix"]),
    ("training", "STREAMREC_TRAINING_", ["run"]),
])
def test_a_wrong_password_stops_start_up_in_one_line(
    module: str, prefix: str, args: list[str], passwords: dict[str, str], tmp_path: Path,
) -> None:
    wrong = "not-" + passwords[module]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", f"{prefix}KAFKA_BOOTSTRAP": KAFKA,
           f"{prefix}REDIS_URL": REDIS, f"{prefix}ARTIFACT_DIR": str(tmp_path),
           **security_env(prefix, module, passwords[module], redis_user=True),
           f"{prefix}KAFKA_SASL_PASSWORD": wrong}
    if module in ("ingest", "training"):
        env = {k: v for k, v in env.items() if "REDIS" not in k and "ARTIFACT" not in k}
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert f"{prefix}KAFKA_SASL_PASSWORD" in output, output
    assert "Traceback" not in output, output
    assert wrong not in output
    named = [line for line in output.splitlines() if "KAFKA_SASL_PASSWORD" in line]
    assert len(named) == 1, output
