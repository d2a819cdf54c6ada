"""Routing as a record on ``model-routing`` that every serving process follows.

At start the topic (compacted, one partition: contracts/routing.py) is read from its
beginning; the record in force (the last one) names the versions to load and their
roles, and ``production.json`` is the fallback while there is none. :class:`RoutingFollower`
then applies records in offset order: it loads the versions a record names that are not
held (from the record's uris, else the artifact store), then swaps the routing in one
assignment. A record naming a version that cannot be loaded is logged and reported
(``routing_error`` in Admin ``Status``); the routing in force stays. Records are written
by :class:`serving.releases.ModelAdmin` and by training.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import KafkaError

from contracts import routing as contract
from contracts.catchup import read_to_end, topic_partitions
from contracts.security import KafkaSecurity, kafka_kwargs
from protos import events_pb2
from serving.artifact import BOOTSTRAP_VERSION, artifact_path, load_version
from serving.errors import ArtifactError, BrokerUnavailable, ServingError
from serving.index import ItemIndex
from serving.models import Model, Models, Routing

log = logging.getLogger(__name__)


def build_model(version_dir: Path, version: str, *, ivf_threshold: int, nprobe: int,
                cache_dir: Path | None = None, memory_mb: float | None = None) -> Model:
    """Read one version's item vectors and index them (blocking: call in a thread)."""
    state = load_version(version_dir, version)
    try:
        index = ItemIndex.build(state.dim, state.item_ids, state.vectors,
                                ivf_threshold=ivf_threshold, nprobe=nprobe, cache_dir=cache_dir,
                                memory_mb=memory_mb)
    except ValueError as error:
        raise ArtifactError(f"model {version}: {error}") from error
    return Model(version, index)


async def read_in_force(bootstrap_servers: list[str], client_id: str, topic: str,
                        security: KafkaSecurity | None = None) -> events_pb2.Routing | None:
    """The record in force on `topic`: every record from the beginning to the end offset
    seen now, folded; None when there is none."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, client_id=client_id,
                                group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", **kafka_kwargs(security))
    try:
        await consumer.start()
        partitions = await topic_partitions(bootstrap_servers, client_id, topic, security)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        in_force: events_pb2.Routing | None = None

        def fold(records: list[ConsumerRecord]) -> None:
            nonlocal in_force
            in_force = contract.fold(in_force, ((r.key, r.value) for r in records))

        await read_to_end(consumer, partitions, fold)
        return in_force
    except KafkaError as error:
        raise BrokerUnavailable(f"cannot read {topic!r}: {error}") from error
    finally:
        await consumer.stop()


def production_routing(production: str, uri: str = "") -> events_pb2.Routing:
    """The routing while no record exists: ``production.json``'s version alone."""
    return events_pb2.Routing(production=production, production_uri=uri, change="production.json")


class VersionLoader:
    """Reads a version's artifact and builds its index in a worker thread."""

    def __init__(self, *, artifact_dir: Path, dim: int, ivf_threshold: int, nprobe: int,
                 cache_dir: Path | None, memory_mb: float | None = None) -> None:
        self.artifact_dir = artifact_dir
        self._dim = dim
        self._ivf_threshold = ivf_threshold
        self._nprobe = nprobe
        self._cache_dir = cache_dir
        self._memory_mb = memory_mb

    def uri(self, version: str, uri: str) -> str:
        """`uri`, or the version's directory in the artifact store."""
        return uri or str(self.artifact_dir / version)

    async def __call__(self, version: str, uri: str) -> Model:
        if version == BOOTSTRAP_VERSION and not uri and not (self.artifact_dir / version).is_dir():
            return Model(version, ItemIndex(self._dim))  # before any artifact: vectors come on item-vectors
        uri = self.uri(version, uri)
        model = await asyncio.to_thread(build_model, artifact_path(uri), version,
                                        ivf_threshold=self._ivf_threshold, nprobe=self._nprobe,
                                        cache_dir=self._cache_dir, memory_mb=self._memory_mb)
        gc.freeze()  # the new index's maps live as long as the version: out of the collector's passes
        return Model(version, model.index, uri)


class RoutingFollower:
    """Applies ``model-routing`` records to `models` in offset order, one batch at a time."""

    def __init__(self, models: Models, load: VersionLoader, *,
                 fallback: events_pb2.Routing) -> None:
        self.models = models
        self._load = load
        self._fallback = fallback  # production.json's routing, in force while there is no record
        self._folded: events_pb2.Routing | None = None  # every record read so far, folded
        first = models.production
        self.record = production_routing(first.version, first.uri)  # the routing in force here
        self.error = ""  # why the newest record is not in force; empty when it is
        self.error_offset = -1
        self.applied_offset = -1  # every record up to here is applied (or rejected)
        self.loaded = asyncio.Event()  # set by the server once the start-up read is applied
        self._queue: asyncio.Queue[ConsumerRecord] = asyncio.Queue()
        self._applied = asyncio.Condition()

    def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        for record in records:
            self._queue.put_nowait(record)

    async def caught_up(self) -> None:
        """Until every record handed over so far is applied."""
        await self._queue.join()

    async def load(self, version: str, uri: str) -> Model:
        """The held `version`, reading it from `uri` (or the store) first if it is not held."""
        model = self.models.get(version)
        if model is not None and (not uri or self._load.uri(version, uri) == model.uri):
            return model
        model = await self._load(version, uri)
        self.models.add(model)
        return model

    async def run(self) -> None:
        """Apply queued records until cancelled; what is queued together is folded first,
        so only the last routing's versions are loaded."""
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._apply(batch)
            finally:
                async with self._applied:
                    self.applied_offset = max(self.applied_offset, batch[-1].offset)
                    self._applied.notify_all()
                for _ in batch:
                    self._queue.task_done()

    @property
    def artifact_dir(self) -> Path:
        return self._load.artifact_dir

    def next_revision(self) -> int:
        """One past the newest revision read, applied or not."""
        return max(self.record.revision, self._folded.revision if self._folded else 0) + 1

    async def wait_applied(self, offset: int) -> None:
        """Until the record at `offset` is applied (or rejected) here."""
        async with self._applied:
            await self._applied.wait_for(lambda: self.applied_offset >= offset)

    async def _apply(self, batch: list[ConsumerRecord]) -> None:
        self._folded = contract.fold(self._folded, ((r.key, r.value) for r in batch))
        target = self._folded or self._fallback
        if target.SerializeToString() == self.record.SerializeToString():
            return
        try:
            for version in Routing.of(target).versions():
                await self.load(version, contract.uri_of(target, version))
            self.models.route(Routing.of(target))
        except Exception as error:  # a bad record never stops the follower
            if not isinstance(error, (ServingError, OSError)):
                log.exception("routing revision %s", target.revision)
            self.error = f"revision {target.revision} ({target.change} by {target.changed_by}): {error}"
            self.error_offset = batch[-1].offset
            log.error("routing %s not applied, %s stays: %s", target.revision,
                      self.record.revision, error)
            self._drop_unrouted()
            return
        self.record, self.error = target, ""
        log.info("routing revision %s (%s by %s) in force", target.revision, target.change or "-",
                 target.changed_by or "production.json")

    def _drop_unrouted(self) -> None:
        """Drop versions loaded for a routing that did not come into force."""
        self.models.route(self.models.routing)
