"""compose/docker-compose.yml is valid and wires health-gated startup of the whole stack."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The file as Compose resolves it (anchors merged, profiles included), no engine needed."""
    result = subprocess.run(
        [*_compose_command(), "-f", str(COMPOSE_FILE), "--profile", "tools", "config"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = yaml.safe_load(result.stdout)
    return loaded


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
