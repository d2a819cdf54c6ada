"""compose/docker-compose.yml is valid and wires health-gated startup of the whole stack; the
secured profile laid over it, and the scale profile (a file of its own), are valid too."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
DEPLOYABLES = {"streams": "STREAMREC_STREAMS_", "serving": "STREAMREC_SERVING_", "training": "STREAMREC_TRAINING_"}


def _compose_command() -> list[str]:
    """`docker compose` when the plugin is installed, else the standalone `docker-compose`."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        return [standalone]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed; run `bash scripts/setup.sh`")


def _volumes(service: dict[str, Any]) -> set[tuple[str, str]]:
    """(source, target) of each mount, from the short (v1) or long (v2) syntax."""
    mounts = set()
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.add((volume["source"], volume["target"]))
        else:
            source, target = volume.split(":")[:2]
            mounts.add((source, target))
    return mounts


def _resolved(*files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`files` laid over one another as Compose resolves them (anchors merged, the tools
    profile included), no engine needed."""
    result = subprocess.run(
        [*_compose_command(), *(arg for file in files for arg in ("-f", str(file))), "--profile", "tools", "config"],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = yaml.safe_load(result.stdout)
    return loaded


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The file as Compose resolves it."""
    return _resolved(COMPOSE_FILE)


def test_stack_has_infrastructure_and_deployables(config: dict[str, Any]) -> None:
    assert {"kafka", "redis", *DEPLOYABLES} <= set(config["services"])
    assert config["services"]["kafka"]["image"].startswith("apache/kafka:")
    # Topics are created by the deployables with their contract settings.
    assert config["services"]["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_long_running_services_have_healthchecks(config: dict[str, Any]) -> None:
    for name in ("kafka", "redis", *DEPLOYABLES):
        test = config["services"][name]["healthcheck"]["test"]
        assert test and test[0] in ("CMD", "CMD-SHELL"), name


def test_serving_healthcheck_uses_grpc_health(config: dict[str, Any]) -> None:
    probe = " ".join(config["services"]["serving"]["healthcheck"]["test"])
    assert "grpc_health" in probe and "SERVING" in probe


def test_deployables_wait_for_healthy_dependencies(config: dict[str, Any]) -> None:
    for name in DEPLOYABLES:
        depends = config["services"][name]["depends_on"]
        assert "kafka" in depends, name
        assert all(d["condition"] == "service_healthy" for d in depends.values()), name
    assert "redis" in config["services"]["streams"]["depends_on"]
    assert "redis" in config["services"]["serving"]["depends_on"]


def test_deployables_share_artifacts_and_use_their_settings_prefix(config: dict[str, Any]) -> None:
    for name, prefix in DEPLOYABLES.items():
        service = config["services"][name]
        env = service["environment"]
        assert env[f"{prefix}KAFKA_BOOTSTRAP"] == "kafka:9092", name
        assert env[f"{prefix}ARTIFACT_DIR"] == "/data/artifacts", name
        assert ("artifacts", "/data/artifacts") in _volumes(service), name
        assert service["build"]["dockerfile"] == "compose/Dockerfile", name
    for name in ("streams", "serving"):
        prefix = DEPLOYABLES[name]
        assert config["services"][name]["environment"][f"{prefix}REDIS_URL"] == "redis://redis:6379/0"
    assert config["services"]["serving"]["environment"]["STREAMREC_SERVING_HOST"] == "0.0.0.0"


SECURED_FILE = ROOT / "compose" / "docker-compose.secured.yml"
SECRETS = {name: f"{name.lower()}-value-7f3a" for name in (
    "KAFKA_ADMIN_PASSWORD", "STREAMS_PASSWORD", "SERVING_PASSWORD", "TRAINING_PASSWORD",
    "INGEST_PASSWORD", "REDIS_ADMIN_PASSWORD", "SERVING_TOKEN")}


@pytest.fixture(scope="module")
def secured() -> dict[str, Any]:
    """The secured profile laid over the file, as Compose resolves it."""
    return _resolved(COMPOSE_FILE, SECURED_FILE, env={**os.environ, **SECRETS})


def test_secured_profile_needs_every_secret() -> None:
    result = subprocess.run(
        [*_compose_command(), "-f", str(COMPOSE_FILE), "-f", str(SECURED_FILE), "config"],
        capture_output=True, text=True, timeout=120, check=False,
        env={k: v for k, v in os.environ.items() if k not in SECRETS},
    )
    assert result.returncode != 0 and "PASSWORD" in result.stderr


def test_secured_kafka_listens_only_with_sasl_ssl_and_acls(secured: dict[str, Any]) -> None:
    env = secured["services"]["kafka"]["environment"]
    protocols = dict(pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert {name: p for name, p in protocols.items() if name != "CONTROLLER"} == {
        "SASL_SSL": "SASL_SSL", "HOST": "SASL_SSL"}
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    setup = secured["services"]["kafka-setup"]
    assert "users" in setup["command"][-1] and "grant" in setup["command"][-1]


def test_secured_deployables_connect_as_their_own_users(secured: dict[str, Any]) -> None:
    for name, prefix in {**DEPLOYABLES, "ingest": "STREAMREC_INGEST_"}.items():
        service = secured["services"][name]
        env = service["environment"]
        assert env[f"{prefix}KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", name
        assert env[f"{prefix}KAFKA_SASL_USERNAME"] == name
        assert env[f"{prefix}KAFKA_SASL_PASSWORD"] == SECRETS[f"{name.upper()}_PASSWORD"]
        assert env[f"{prefix}KAFKA_SSL_CAFILE"] == "/etc/streamrec/certs/ca.pem"
        assert service["depends_on"]["kafka-setup"]["condition"] == "service_completed_successfully"
    for name in ("streams", "serving"):
        env = secured["services"][name]["environment"]
        prefix = DEPLOYABLES[name]
        assert env[f"{prefix}REDIS_URL"].startswith("rediss://"), name
        assert env[f"{prefix}REDIS_USERNAME"] == name


def test_secured_redis_and_grpc_ask_for_credentials_over_tls(secured: dict[str, Any]) -> None:
    redis_command = " ".join(secured["services"]["redis"]["command"])
    assert "--port 0" in redis_command and "--aclfile" in redis_command
    assert "user default off" in redis_command
    # No secret on a command line (docker compose ps, docker inspect's Args).
    for service in secured["services"].values():
        command = " ".join(service.get("command") or [])
        assert not any(value in command for value in SECRETS.values()), command
    serving = secured["services"]["serving"]["environment"]
    assert SECRETS["SERVING_TOKEN"] in serving["STREAMREC_SERVING_AUTH_TOKENS"]
    assert serving["STREAMREC_SERVING_TLS_CERT_FILE"].endswith("server.pem")


SCALE_FILE = ROOT / "compose" / "docker-compose.scale.yml"
KAFKA_NODES = ("kafka-1", "kafka-2", "kafka-3")
REDIS_NODES = tuple(f"redis-{n}" for n in range(1, 7))
SCALED = {"streams-1": "STREAMREC_STREAMS_", "streams-2": "STREAMREC_STREAMS_",
          "serving-1": "STREAMREC_SERVING_", "serving-2": "STREAMREC_SERVING_"}


@pytest.fixture(scope="module")
def scale() -> dict[str, Any]:
    """The scale profile (a file of its own), as Compose resolves it."""
    return _resolved(SCALE_FILE)


def test_scale_kafka_is_three_kraft_nodes_with_replication_3_and_two_in_sync(scale: dict[str, Any]) -> None:
    envs = [scale["services"][name]["environment"] for name in KAFKA_NODES]
    assert sorted(int(env["KAFKA_NODE_ID"]) for env in envs) == [1, 2, 3]
    for name, env in zip(KAFKA_NODES, envs, strict=True):
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
        assert f"PLAINTEXT://{name}:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
        assert str(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == "3"
        assert str(env["KAFKA_MIN_INSYNC_REPLICAS"]) == "2"
        assert str(env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]) == "3"
        assert str(env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == "2"
        assert str(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == "3"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert len({env["CLUSTER_ID"] for env in envs}) == 1


def test_scale_redis_is_a_cluster_of_six_formed_by_a_one_shot_job(scale: dict[str, Any]) -> None:
    for name in REDIS_NODES:
        service = scale["services"][name]
        command = " ".join(service["command"])
        assert "--cluster-enabled yes" in command and "--cluster-config-file /data/nodes.conf" in command, name
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    job = scale["services"]["redis-cluster"]
    script = job["command"][-1]
    assert "redis-cli --cluster create" in script and "--cluster-replicas 1" in script
    assert "--cluster-yes" in script and "for n in 1 2 3 4 5 6" in script
    assert job["restart"] == "no"
    assert {name: dep["condition"] for name, dep in job["depends_on"].items()} == {
        name: "service_healthy" for name in REDIS_NODES}


def test_scale_deployables_use_every_broker_the_redis_cluster_and_replication_3(scale: dict[str, Any]) -> None:
    for name, prefix in SCALED.items():
        service = scale["services"][name]
        env = service["environment"]
        assert env[f"{prefix}KAFKA_BOOTSTRAP"] == "kafka-1:9092,kafka-2:9092,kafka-3:9092", name
        assert env[f"{prefix}TOPIC_REPLICATION"] == "3", name
        assert env[f"{prefix}REDIS_URL"] == "redis+cluster://redis-1:6379,redis-2:6379,redis-3:6379", name
        depends = service["depends_on"]
        assert all(depends[node]["condition"] == "service_healthy" for node in KAFKA_NODES), name
        assert depends["redis-cluster"]["condition"] == "service_completed_successfully", name
        assert ("artifacts", "/data/artifacts") in _volumes(service), name
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    for name in ("training", "ingest"):
        prefix = f"STREAMREC_{name.upper()}_"
        env = scale["services"][name]["environment"]
        assert env[f"{prefix}KAFKA_BOOTSTRAP"] == "kafka-1:9092,kafka-2:9092,kafka-3:9092", name
        assert env[f"{prefix}TOPIC_REPLICATION"] == "3", name


def test_scale_streams_workers_are_one_app_with_state_of_their_own(scale: dict[str, Any]) -> None:
    workers = [scale["services"][name] for name in ("streams-1", "streams-2")]
    assert workers[0]["command"] == workers[1]["command"] == ["python", "-m", "streams", "worker"]
    assert workers[0]["environment"] == workers[1]["environment"]  # one app id: one consumer group
    state = [{source for source, target in _volumes(w) if target == "/data/streams"} for w in workers]
    assert len(state[0] | state[1]) == 2  # each its own state directory


def test_scale_serving_replicas_share_one_name_and_drain_before_they_are_killed(scale: dict[str, Any]) -> None:
    replicas = [scale["services"][name] for name in ("serving-1", "serving-2")]
    for replica in replicas:
        env = replica["environment"]
        assert env["STREAMREC_SERVING_WORKERS"] == "1" and env["STREAMREC_SERVING_HOST"] == "0.0.0.0"
        assert "serving" in replica["networks"]["default"]["aliases"]  # dns:///serving:50051: both
        probe = " ".join(replica["healthcheck"]["test"])
        assert "grpc_health" in probe and "SERVING" in probe
        drain_s = float(env["STREAMREC_SERVING_SHUTDOWN_DELAY_S"]) + float(env["STREAMREC_SERVING_GRACE_S"])
        assert replica["stop_grace_period"].endswith("s")
        assert float(replica["stop_grace_period"].removesuffix("s")) > drain_s
        assert ("index-cache", "/data/index-cache") in _volumes(replica)
    published = [{port["published"] if isinstance(port, dict) else port.split(":")[-2]
                  for port in replica["ports"]} for replica in replicas]
    assert published[0] != published[1]
    assert "envoy" not in " ".join(scale["services"])  # the clients balance
