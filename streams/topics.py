"""The topics the worker reads and writes, created at start when missing.

Runs before the Faust app so the broker's auto-creation (plain delete-policy topics)
never gets there first, and so a shape the worker cannot use stops start-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code
from mode import Service

from streams.errors import TopicSetupError
from streams.settings import StreamsSettings

log = logging.getLogger(__name__)

VISIBLE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TopicSpec:
    """How a topic is created; ``copartitioned`` topics must have exactly ``partitions``."""

    name: str
    partitions: int
    replication: int
    configs: dict[str, str] = field(default_factory=dict)
    copartitioned: bool = False

    @property
    def compacted(self) -> bool:
        return self.configs.get("cleanup.policy") == "compact"


def topic_specs(settings: StreamsSettings) -> list[TopicSpec]:
    """The contract topics the worker reads or writes (docs/contracts.md §2)."""
    partitions, replication = settings.topic_partitions, settings.topic_replication
    compact = {"cleanup.policy": "compact"}
    log_configs = {"cleanup.policy": "delete", "retention.ms": str(settings.log_retention_ms)}
    return [
        # User states are partitioned like events: they must match.
        TopicSpec(settings.topic_events, partitions, replication, copartitioned=True),
        TopicSpec(settings.users_changelog(), partitions, replication, dict(compact),
                  copartitioned=True),
        TopicSpec(settings.dedupe_changelog(), partitions, replication, dict(compact),
                  copartitioned=True),
        TopicSpec(settings.topic_enriched, partitions, replication, dict(log_configs)),
        TopicSpec(settings.topic_dlq, partitions, replication, dict(log_configs)),
        TopicSpec(settings.topic_items, partitions, replication, dict(compact)),
        TopicSpec(settings.topic_item_vectors, partitions, replication, dict(compact)),
        # One partition: releases apply in the order they were announced.
        TopicSpec(settings.topic_models, 1, replication, dict(log_configs)),
    ]


def check_shape(
    spec: TopicSpec, partitions: int, cleanup_policy: str | None
) -> tuple[list[str], list[str]]:
    """``(fatal, warnings)`` about an existing topic: a copartitioned topic with another
    partition count stops start-up; a catalog topic that is not compacted is a warning."""
    fatal: list[str] = []
    warnings: list[str] = []
    if spec.copartitioned and partitions != spec.partitions:
        fatal.append(
            f"topic {spec.name!r} has {partitions} partitions but topic_partitions is "
            f"{spec.partitions}; set STREAMREC_STREAMS_TOPIC_PARTITIONS={partitions}"
        )
    if spec.compacted and "compact" not in (cleanup_policy or ""):
        warnings.append(
            f"topic {spec.name!r} has cleanup.policy={cleanup_policy!r}, the contract says "
            "compact; retention will delete old entries"
        )
    return fatal, warnings


class TopicSetup(Service):
    """Creates missing topics and checks the shape of existing ones, once, at start."""

    def __init__(self, specs: list[TopicSpec], *, bootstrap_servers: list[str],
                 **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.specs = specs
        self._bootstrap_servers = bootstrap_servers

    async def on_start(self) -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap_servers, client_id="streamrec-streams-setup"
        )
        await admin.start()
        try:
            await self._create_missing(admin)
            await self._wait_until_visible(admin)
            await self._check_shapes(admin)
        finally:
            await admin.close()

    async def _create_missing(self, admin: AIOKafkaAdminClient) -> None:
        existing = set(await admin.list_topics())
        missing = [spec for spec in self.specs if spec.name not in existing]
        if not missing:
            return
        response = await admin.create_topics(
            [
                NewTopic(spec.name, spec.partitions, spec.replication, topic_configs=spec.configs)
                for spec in missing
            ]
        )
        for name, code, *message in response.topic_errors:
            error = for_code(code)
            if code and error is not TopicAlreadyExistsError:
                raise TopicSetupError(f"cannot create topic {name!r}: {error.__name__} {message}")
        log.info("created topics %s", ", ".join(spec.name for spec in missing))

    async def _wait_until_visible(self, admin: AIOKafkaAdminClient) -> None:
        """New topics reach the broker's metadata a moment after creation."""
        deadline = time.monotonic() + VISIBLE_TIMEOUT_S
        names = [spec.name for spec in self.specs]
        while True:
            described = await admin.describe_topics(names)
            hidden = [
                topic["topic"]
                for topic in described
                if topic["error_code"]
                or not topic["partitions"]
                or any(partition["leader"] < 0 for partition in topic["partitions"])
            ]
            if not hidden:
                return
            if time.monotonic() > deadline:
                raise TopicSetupError(
                    f"topics {hidden} have no leader {VISIBLE_TIMEOUT_S:.0f} s after creation"
                )
            await asyncio.sleep(0.1)

    async def _check_shapes(self, admin: AIOKafkaAdminClient) -> None:
        described = await admin.describe_topics([spec.name for spec in self.specs])
        partitions = {topic["topic"]: len(topic["partitions"]) for topic in described}
        policies = await self._cleanup_policies(admin)
        fatal: list[str] = []
        for spec in self.specs:
            problems, warnings = check_shape(
                spec, partitions.get(spec.name, 0), policies.get(spec.name)
            )
            fatal.extend(problems)
            for warning in warnings:
                log.warning("%s", warning)
        if fatal:
            raise TopicSetupError("; ".join(fatal))

    async def _cleanup_policies(self, admin: AIOKafkaAdminClient) -> dict[str, str]:
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, spec.name, configs={"cleanup.policy": None})
            for spec in self.specs
            if spec.compacted
        ]
        policies: dict[str, str] = {}
        for response in await admin.describe_configs(resources):
            for _code, _message, _kind, name, entries in response.resources:
                for entry in entries:
                    if entry[0] == "cleanup.policy":
                        policies[name] = entry[1]
        return policies
