"""Admin changes to the routing: promote, roll back, split, as ``model-routing`` records.

:class:`ModelAdmin` loads the version a call names first (so a bad uri fails the call,
not every process), writes the next record from the one in force (acks=all, idempotent
producer) and waits until this process has applied it, so its answer, and a ``Status``
right after, show the change. Every other serving process applies the same record from
the topic (:mod:`serving.routing`); nothing is sent to them directly.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from contracts import routing as contract
from protos import events_pb2
from serving.errors import ArtifactError, BrokerUnavailable, ModelNotLoaded
from serving.models import Model, Routing
from serving.routing import RoutingFollower


class ModelAdmin:
    """Promote, roll back and split traffic by writing the next ``model-routing`` record."""

    def __init__(self, follower: RoutingFollower, producer: AIOKafkaProducer, *, topic: str,
                 writer: str) -> None:
        self.follower = follower
        self.models = follower.models
        self._producer = producer
        self._topic = topic
        self._writer = writer
        self._lock = asyncio.Lock()  # one change at a time from this process

    def status_fields(self) -> dict[str, Any]:
        """What Admin ``Status`` says about the record in force."""
        record = self.follower.record
        return {"revision": record.revision, "changed_by": record.changed_by,
                "routing_error": self.follower.error}

    async def promote(self, version: str, uri: str = "") -> Routing:
        async with self._lock:
            await self.follower.loaded.wait()  # never a change from a routing not read yet
            model = await self._load(version, uri)
            return await self._write(contract.promoted(self.follower.record, version, model.uri,
                                                       by=self._writer, at_ms=_now_ms()))

    async def rollback(self) -> Routing:
        async with self._lock:
            await self.follower.loaded.wait()
            current = self.follower.record
            if not current.previous:
                raise ModelNotLoaded("there is no previous version to roll back to")
            await self._load(current.previous, current.previous_uri)
            return await self._write(contract.rolled_back(current, by=self._writer, at_ms=_now_ms()))

    async def set_split(self, version: str, percent: float, uri: str = "") -> Routing:
        async with self._lock:
            await self.follower.loaded.wait()
            if percent:
                uri = (await self._load(version, uri)).uri
            return await self._write(contract.split(self.follower.record, version, percent, uri,
                                                    by=self._writer, at_ms=_now_ms()))

    async def _load(self, version: str, uri: str) -> Model:
        """The version a call names, held; not in the store and no uri: ModelNotLoaded."""
        store = self.follower.artifact_dir / version
        if self.models.get(version) is None and not uri and not store.is_dir():
            raise ModelNotLoaded(f"model version {version!r} is not loaded, no uri was given and "
                                 f"{store.parent} does not hold it")
        return await self.follower.load(version, uri)

    async def _write(self, record: events_pb2.Routing) -> Routing:
        """Write `record`, then wait until this process has applied it."""
        record.revision = self.follower.next_revision()
        try:
            sent = await self._producer.send_and_wait(self._topic, key=contract.KEY,
                                                      value=record.SerializeToString())
        except KafkaError as error:
            raise BrokerUnavailable(f"routing not written to {self._topic!r}: {error}") from error
        await self.follower.wait_applied(sent.offset)
        if self.follower.error_offset >= sent.offset:
            raise ArtifactError(self.follower.error)
        return self.models.routing


def _now_ms() -> int:
    return int(time.time() * 1000)
