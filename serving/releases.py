"""Model versions changed while serving: admin calls and ``ModelRelease`` records on ``models``.

Loading a version reads its artifact directory (contracts §4) and builds its index in a
worker thread (IVF training at 1M items takes about a minute), then holds it next to the
others; promotion is one swap of the routing, so a request sees either the old or the
new version, never a mix. Releases are applied one at a time, in log order.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Sequence
from pathlib import Path

from aiokafka import ConsumerRecord
from google.protobuf.message import DecodeError

from protos import events_pb2
from serving.artifact import load_version
from serving.errors import ArtifactError, ModelNotLoaded
from serving.index import ItemIndex
from serving.models import Model, Models, Routing

log = logging.getLogger(__name__)


def artifact_path(uri: str) -> Path:
    """The local directory of an artifact uri (a path or a ``file://`` url)."""
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if "://" in uri:
        raise ArtifactError(f"unsupported artifact uri {uri!r}: only local directories")
    return Path(uri)


def build_model(version_dir: Path, version: str, *, ivf_threshold: int, nprobe: int,
                cache_dir: Path | None = None) -> Model:
    """Read one version's item vectors and index them (blocking: call in a thread)."""
    state = load_version(version_dir, version)
    try:
        index = ItemIndex.build(state.dim, state.item_ids, state.vectors,
                                ivf_threshold=ivf_threshold, nprobe=nprobe, cache_dir=cache_dir)
    except ValueError as error:
        raise ArtifactError(f"model {version}: {error}") from error
    return Model(version, index)


class ModelAdmin:
    """Promote, roll back and split traffic over the loaded versions."""

    def __init__(self, models: Models, *, ivf_threshold: int, nprobe: int,
                 cache_dir: Path | None = None) -> None:
        self.models = models
        self._ivf_threshold = ivf_threshold
        self._nprobe = nprobe
        self._cache_dir = cache_dir
        self._lock = asyncio.Lock()  # one change at a time

    async def load(self, version: str, uri: str) -> Model:
        """The loaded `version`, reading it from `uri` first if it is not held yet."""
        model = self.models.get(version)
        if model is not None:
            return model
        if not uri:
            raise ModelNotLoaded(f"model version {version!r} is not loaded and no uri was given")
        model = await asyncio.to_thread(build_model, artifact_path(uri), version,
                                        ivf_threshold=self._ivf_threshold, nprobe=self._nprobe,
                                        cache_dir=self._cache_dir)
        self.models.add(model)
        gc.freeze()  # the new index's maps live as long as the version: out of the collector's passes
        return model

    async def promote(self, version: str, uri: str = "") -> Routing:
        async with self._lock:
            await self.load(version, uri)
            return self.models.promote(version)

    async def rollback(self) -> Routing:
        async with self._lock:
            return self.models.rollback()

    async def set_split(self, version: str, percent: float, uri: str = "") -> Routing:
        async with self._lock:
            if percent:
                await self.load(version, uri)
            return self.models.set_split(version, percent)


class ReleaseUpdates:
    """``ModelRelease`` records from ``models``: "promote" and "rollback" both make the
    named version production (loading it from its uri when it is not held)."""

    def __init__(self, admin: ModelAdmin) -> None:
        self._admin = admin
        self._queue: asyncio.Queue[events_pb2.ModelRelease] = asyncio.Queue()

    def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        for record in records:
            try:
                release = events_pb2.ModelRelease.FromString(record.value or b"")
            except DecodeError:
                log.warning("undecodable model release at %s[%s]@%s", record.topic,
                            record.partition, record.offset)
                continue
            if release.action not in ("promote", "rollback") or not release.version:
                log.warning("ignoring model release %r with action %r", release.version,
                            release.action)
                continue
            self._queue.put_nowait(release)

    async def run(self) -> None:
        """Apply queued releases one by one until cancelled; a bad one is logged, not fatal."""
        while True:
            release = await self._queue.get()
            try:
                routing = await self._admin.promote(release.version, release.uri)
                log.info("model release %s (%s): production is %s", release.version,
                         release.action, routing.production)
            except (ArtifactError, ModelNotLoaded) as error:
                log.error("model release %s not applied: %s", release.version, error)
