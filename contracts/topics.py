"""The Kafka topics of docs/contracts.md §2: names' defaults, settings, creation, checks.

Every deployable creates the topics it writes, with these settings, before its first
produce (the broker's auto-creation is off: a producer's first write would otherwise
make a plain delete-policy topic of the compacted catalog). An existing topic whose
cleanup policy differs from its contract is reported in one log line that names the
command which fixes it; :func:`fix_topics` is that command's body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from pydantic import BaseModel, Field, model_validator

from contracts.security import KafkaSecurity, SecurityError, kafka_kwargs, probe_kafka

log = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 4
DEFAULT_REPLICATION = 1
LONG_RETENTION_MS = 365 * 24 * 3600 * 1000
VISIBLE_TIMEOUT_S = 30.0
_DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs v1+ config_source: set on the topic itself


class TopicContractError(Exception):
    """A topic cannot be created, or its shape breaks the contract."""


@dataclass(frozen=True)
class Role:
    """What a topic is for: its default name and the settings it is created with."""

    default_name: str
    compacted: bool
    long_retention: bool = False
    partitions: int | None = None  # a fixed count, whatever the deployment's default


EVENTS = Role("events", compacted=False)
ENRICHED = Role("events.enriched", compacted=False, long_retention=True)
DLQ = Role("events.dlq", compacted=False, long_retention=True)
ITEMS = Role("items", compacted=True)
ITEM_VECTORS = Role("item-vectors", compacted=True)
# One partition: releases apply in the order they were announced.
MODELS = Role("models", compacted=False, long_retention=True, partitions=1)
RECOMMENDATIONS = Role("recommendations", compacted=False, long_retention=True)
USERS_CHANGELOG = Role("{app_id}-users-changelog", compacted=True)
DEDUPE_CHANGELOG = Role("{app_id}-dedupe-changelog", compacted=True)
# One partition: every writer of routing (Admin, the trainer) shares one order.
ROUTING = Role("model-routing", compacted=True, partitions=1)
# Compacted: the newest record of an edge (key contracts.relations.edge_key) is its state,
# a tombstone removes it.
RELATIONS = Role("relations", compacted=True)
# Compacted, key user id: the newest deletion request of a user (events.proto UserDeletion).
DELETIONS = Role("deletions", compacted=True)


class TopicLayout(BaseModel):
    """The settings every deployable creates its topics with (one set, the same in all)."""

    topic_partitions: int = Field(
        default=DEFAULT_PARTITIONS, ge=1, le=10_000,
        description="partitions of a topic this deployable creates (models: always 1)",
    )
    topic_replication: int = Field(default=DEFAULT_REPLICATION, ge=1, le=10)
    topic_min_insync_replicas: int | None = Field(
        default=None, ge=1, le=10,
        description="min.insync.replicas of a topic this deployable creates (None: the "
                    "broker's default); with acks=all a write fails unless this many "
                    "replicas have it",
    )
    log_retention_ms: int = Field(
        default=LONG_RETENTION_MS, ge=-1,
        description="retention of the long-retention log topics when created; -1: forever",
    )

    @model_validator(mode="after")
    def _insync_within_replication(self) -> Self:
        if (self.topic_min_insync_replicas is not None
                and self.topic_min_insync_replicas > self.topic_replication):
            raise ValueError(
                f"topic_min_insync_replicas={self.topic_min_insync_replicas} exceeds "
                f"topic_replication={self.topic_replication}: no write with acks=all "
                f"could ever succeed")
        return self


@dataclass(frozen=True)
class TopicSpec:
    """How a topic is created; ``copartitioned`` topics must have exactly ``partitions``."""

    name: str
    partitions: int
    replication: int
    configs: dict[str, str] = field(default_factory=dict)
    copartitioned: bool = False

    @property
    def cleanup_policy(self) -> str:
        return self.configs.get("cleanup.policy", "delete")  # the broker's default

    @property
    def compacted(self) -> bool:
        return self.cleanup_policy == "compact"


def spec(role: Role, name: str, layout: TopicLayout, *, copartitioned: bool = False) -> TopicSpec:
    """The contract's spec of topic `name` playing `role`, with the deployment's layout."""
    configs = {"cleanup.policy": "compact" if role.compacted else "delete"}
    if role.long_retention:
        configs["retention.ms"] = str(layout.log_retention_ms)
    if layout.topic_min_insync_replicas is not None:
        configs["min.insync.replicas"] = str(layout.topic_min_insync_replicas)
    return TopicSpec(name, role.partitions or layout.topic_partitions, layout.topic_replication,
                     configs, copartitioned)


@dataclass(frozen=True)
class Mismatch:
    """An existing topic whose cleanup policy is not the contract's."""

    spec: TopicSpec
    actual: str | None


def check_shape(spec: TopicSpec, partitions: int, cleanup_policy: str | None
                ) -> tuple[list[str], Mismatch | None]:
    """``(fatal, mismatch)`` about an existing topic: a copartitioned topic with another
    partition count is fatal; another cleanup policy is a fixable mismatch."""
    fatal: list[str] = []
    if spec.copartitioned and partitions != spec.partitions:
        fatal.append(
            f"topic {spec.name!r} has {partitions} partitions but topic_partitions is "
            f"{spec.partitions}; set topic_partitions={partitions} (for the worker: "
            f"STREAMREC_STREAMS_TOPIC_PARTITIONS={partitions})"
        )
    policies = set((cleanup_policy or "delete").replace(" ", "").split(","))
    wanted = {spec.cleanup_policy}
    return fatal, (Mismatch(spec, cleanup_policy) if policies != wanted else None)


def mismatch_line(mismatch: Mismatch, *, bootstrap: str, fix_command: str | None) -> str:
    """One log line: what is wrong, what it costs, and the commands that fix it."""
    spec = mismatch.spec
    cost = ("retention will delete old entries" if spec.compacted
            else "compaction keeps only the newest record per key")
    return (
        f"topic {spec.name!r} has cleanup.policy={mismatch.actual!r} but the contract says "
        f"{spec.cleanup_policy!r} ({cost}); fix it with "
        + (f"`{fix_command}` or " if fix_command else "")
        + f"`kafka-configs.sh --bootstrap-server {bootstrap} --alter --entity-type topics "
        f"--entity-name {spec.name} --add-config cleanup.policy={spec.cleanup_policy}`"
    )


async def ensure_topics(bootstrap: str, specs: Sequence[TopicSpec], *, client_id: str,
                        fix_command: str | None = None, security: KafkaSecurity | None = None
                        ) -> list[Mismatch]:
    """Create the missing topics with their contract settings, wait until every one has
    leaders, and check the existing ones: raises `TopicContractError` on a fatal shape,
    logs one warning line per mismatched policy (and returns the mismatches). It is each
    deployable's first connection: a broker refusing `security` raises `TopicContractError`
    with one line naming the setting."""
    await _probe(bootstrap, security, client_id)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id,
                                **kafka_kwargs(security))
    await admin.start()
    try:
        await _create_missing(admin, specs)
        await _wait_until_visible(admin, specs)
        fatal, mismatches = await _check(admin, specs)
    finally:
        await admin.close()
    for mismatch in mismatches:
        log.warning("%s", mismatch_line(mismatch, bootstrap=bootstrap, fix_command=fix_command))
    if fatal:
        raise TopicContractError("; ".join(fatal))
    return mismatches


async def wait_for_coordinator(bootstrap: str, group_id: str, *, client_id: str,
                               timeout_s: float = VISIBLE_TIMEOUT_S,
                               security: KafkaSecurity | None = None) -> None:
    """Wait until `group_id` has a group coordinator. A new broker creates its offsets topic
    on the first lookup and answers "not available" until that topic has leaders; a
    consumer that meets this logs it as an ERROR, so a deployable waits here first."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id,
                                **kafka_kwargs(security))
    await admin.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                await admin.find_coordinator(group_id)
                return
            except KafkaError as error:
                if not error.retriable or asyncio.get_running_loop().time() > deadline:
                    raise TopicContractError(
                        f"no group coordinator for {group_id!r}: {error}") from error
                await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def fix_topics(bootstrap: str, specs: Sequence[TopicSpec], *, client_id: str,
                     security: KafkaSecurity | None = None) -> list[Mismatch]:
    """Set the contract's cleanup policy on every existing topic of `specs` that differs,
    keeping the topic's other settings; returns what was changed."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id,
                                **kafka_kwargs(security))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        present = [s for s in specs if s.name in existing]
        _fatal, mismatches = await _check(admin, present)
        if mismatches:
            configs = await _dynamic_configs(admin, [m.spec.name for m in mismatches])
            resources = [
                ConfigResource(ConfigResourceType.TOPIC, m.spec.name, configs={
                    **configs.get(m.spec.name, {}), "cleanup.policy": m.spec.cleanup_policy})
                for m in mismatches
            ]
            for response in await admin.alter_configs(resources):
                for code, message, _kind, name in response.resources:
                    if code:
                        raise TopicContractError(
                            f"cannot alter topic {name!r}: {for_code(code).__name__} {message}")
    finally:
        await admin.close()
    return mismatches


async def _probe(bootstrap: str, security: KafkaSecurity | None, client_id: str) -> None:
    try:
        await probe_kafka(bootstrap, security, client_id=client_id)
    except SecurityError as error:
        raise TopicContractError(str(error)) from None


async def _create_missing(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]) -> None:
    existing = set(await admin.list_topics())
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return
    response = await admin.create_topics(
        [NewTopic(s.name, s.partitions, s.replication, topic_configs=s.configs) for s in missing]
    )
    for name, code, *message in response.topic_errors:
        error = for_code(code)
        # Another deployable creating it at the same moment is fine: the check follows.
        if code and error is not TopicAlreadyExistsError:
            raise TopicContractError(f"cannot create topic {name!r}: {error.__name__} {message}")
    log.info("created topics %s", ", ".join(s.name for s in missing))


async def _wait_until_visible(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]) -> None:
    """New topics reach the broker's metadata a moment after creation."""
    deadline = time.monotonic() + VISIBLE_TIMEOUT_S
    names = [s.name for s in specs]
    while True:
        described = await admin.describe_topics(names)
        hidden = [
            topic["topic"] for topic in described
            if topic["error_code"] or not topic["partitions"]
            or any(partition["leader"] < 0 for partition in topic["partitions"])
        ]
        if not hidden:
            return
        if time.monotonic() > deadline:
            raise TopicContractError(
                f"topics {hidden} have no leader {VISIBLE_TIMEOUT_S:.0f} s after creation")
        await asyncio.sleep(0.1)


async def _check(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]
                 ) -> tuple[list[str], list[Mismatch]]:
    if not specs:
        return [], []
    described = await admin.describe_topics([s.name for s in specs])
    partitions = {topic["topic"]: len(topic["partitions"]) for topic in described}
    policies = await _configs(admin, [s.name for s in specs], {"cleanup.policy": None})
    fatal: list[str] = []
    mismatches: list[Mismatch] = []
    for s in specs:
        problems, mismatch = check_shape(s, partitions.get(s.name, 0),
                                         policies.get(s.name, {}).get("cleanup.policy"))
        fatal.extend(problems)
        if mismatch is not None:
            mismatches.append(mismatch)
    return fatal, mismatches


async def _configs(admin: AIOKafkaAdminClient, names: list[str],
                   keys: dict[str, Any] | None, *, dynamic_only: bool = False
                   ) -> dict[str, dict[str, str]]:
    resources = [ConfigResource(ConfigResourceType.TOPIC, name, configs=keys) for name in names]
    found: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for _code, _message, _kind, name, entries in response.resources:
            for key, value, _read_only, source, *_rest in entries:
                if not dynamic_only or source == _DYNAMIC_TOPIC_CONFIG:
                    found.setdefault(name, {})[key] = value
    return found


async def _dynamic_configs(admin: AIOKafkaAdminClient, names: list[str]
                           ) -> dict[str, dict[str, str]]:
    """The settings set on each topic itself (AlterConfigs replaces all of them)."""
    return await _configs(admin, names, None, dynamic_only=True)


async def apply_contract(bootstrap: str, specs: Sequence[TopicSpec], *, client_id: str,
                         security: KafkaSecurity | None = None) -> list[str]:
    """What ``topics fix`` does: set the contract's policy where it differs, create what
    is missing; returns one line per change."""
    await _probe(bootstrap, security, client_id)
    fixed = await fix_topics(bootstrap, specs, client_id=client_id, security=security)
    await ensure_topics(bootstrap, specs, client_id=client_id, security=security)
    lines = [f"{m.spec.name}: cleanup.policy {m.actual} -> {m.spec.cleanup_policy}"
             for m in fixed]
    return lines or [f"{len(specs)} topics match the contract"]
