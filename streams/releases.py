"""Follows ``models``: a ``promote`` or ``rollback`` of a version other than the one in use
is loaded (off the event loop) and queued for the app to apply (:mod:`streams.live`).

Like serving, the worker reads ``models`` from its end at start: the version
``production.json`` names is its starting point. A release that cannot be loaded is
logged and skipped; the worker keeps its version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from google.protobuf.message import DecodeError
from mode import Service

from contracts.security import KafkaSecurity, kafka_kwargs
from protos import events_pb2
from streams.errors import StreamsError
from streams.feed import full_assignment
from streams.live import LiveModel, LoadedModel
from streams.model import BASE_VERSION, ModelChoice, artifact_path, read_version

log = logging.getLogger(__name__)

ACTIONS = ("promote", "rollback")


def wanted_release(record: ConsumerRecord, current: str) -> events_pb2.ModelRelease | None:
    """The release in `record` if the worker should switch to it."""
    try:
        release = events_pb2.ModelRelease.FromString(record.value or b"")
    except DecodeError:
        log.warning("undecodable model release at %s[%s]@%s", record.topic, record.partition,
                    record.offset)
        return None
    if release.action not in ACTIONS or not release.version:
        log.warning("ignoring model release %r with action %r", release.version, release.action)
        return None
    if release.version == current:
        return None
    return release


class ModelReleases(Service):
    """A group-less consumer of ``models`` that loads released versions."""

    def __init__(
        self,
        live: LiveModel,
        *,
        bootstrap_servers: list[str],
        topic: str,
        pretrained_dir: Path,
        load: Callable[[ModelChoice], LoadedModel],
        security: KafkaSecurity | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._live = live
        self._bootstrap_servers = bootstrap_servers
        self._security = security
        self._topic = topic
        self._pretrained_dir = pretrained_dir
        self._load = load
        self._consumer: AIOKafkaConsumer | None = None
        self._queued = live.version  # the newest version loaded or in use

    async def on_start(self) -> None:
        # Subscribed without a group, aiokafka assigns every partition of the topic.
        consumer = AIOKafkaConsumer(
            self._topic, bootstrap_servers=self._bootstrap_servers, group_id=None,
            enable_auto_commit=False, fetch_max_wait_ms=500, client_id="streamrec-streams-models",
            **kafka_kwargs(self._security),
        )
        await consumer.start()
        self._consumer = consumer
        partitions = await full_assignment(consumer, (self._topic,))
        await consumer.seek_to_end(*partitions)

    async def on_shutdown(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    @Service.task
    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None  # started in on_start
        while not self.should_stop:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    await self._apply(record)

    async def _apply(self, record: ConsumerRecord) -> None:
        release = wanted_release(record, self._queued)
        if release is None:
            return
        try:
            choice = self._choice(release)
            model = await asyncio.to_thread(self._load, choice)
        except StreamsError as error:
            log.error("model release %s not applied: %s", release.version, error)
            return
        log.info("model release %s (%s) loaded; switching", release.version, release.action)
        self._queued = release.version
        self._live.pending.put_nowait(model)

    def _choice(self, release: events_pb2.ModelRelease) -> ModelChoice:
        if release.version == BASE_VERSION and not release.uri:
            return ModelChoice(BASE_VERSION, self._pretrained_dir)
        return read_version(artifact_path(release.uri), release.version, self._pretrained_dir)
