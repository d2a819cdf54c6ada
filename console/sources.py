"""The console's edges: each deployable reached through its public contract only.

- :class:`MetricsHistory` scrapes the streams worker's and serving's ``/metrics``;
- :class:`Serving` calls the public Recommender port and the Admin port over gRPC;
- :class:`OnlineState` reads a user's recent items and vector version from Redis
  (``contracts.online``);
- :func:`manifests` reads the artifact store (``contracts.artifact``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from redis.asyncio import Redis

from console.figures import Samples, Snapshot, parse
from contracts.artifact import ArtifactError, list_versions, read_manifest, read_production
from contracts.online import EVENT_TYPE_NAMES, VERSION_FIELD, WRITTEN_AT_FIELD, RedisKeys
from protos import recommender_pb2, recommender_pb2_grpc

log = logging.getLogger(__name__)


class MetricsHistory:
    """The newest `keep` scrapes of both deployables, one every `interval_s` while
    :meth:`run` runs; a deployable that does not answer is an empty scrape, logged once."""

    def __init__(self, session: aiohttp.ClientSession, *, streams_url: str | None,
                 serving_url: str | None, interval_s: float, keep: int) -> None:
        self._session = session
        self._urls = {"streams": streams_url, "serving": serving_url}
        self._interval_s = interval_s
        self.snapshots: deque[Snapshot] = deque(maxlen=keep)
        self.errors: dict[str, str] = {}

    async def _scrape(self, name: str) -> Samples:
        url = self._urls[name]
        if url is None:
            return {}
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as answer:
                answer.raise_for_status()
                text = await answer.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            if name not in self.errors:
                log.warning("%s metrics at %s: %s", name, url, error)
            self.errors[name] = f"{url}: {error}"
            return {}
        self.errors.pop(name, None)
        return parse(text)

    async def sample(self) -> Snapshot:
        streams, serving = await asyncio.gather(self._scrape("streams"), self._scrape("serving"))
        snapshot = Snapshot(at=time.time(), streams=streams, serving=serving)
        self.snapshots.append(snapshot)
        return snapshot

    async def run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self._interval_s)


class Serving:
    """serving's public Recommender port and its Admin port."""

    def __init__(self, *, target: str, admin_target: str, token: str | None,
                 deadline_s: float) -> None:
        self._public = grpc.aio.insecure_channel(target)
        self._admin = grpc.aio.insecure_channel(admin_target)
        self.recommender = recommender_pb2_grpc.RecommenderStub(self._public)
        self.admin = recommender_pb2_grpc.AdminStub(self._admin)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.deadline_s = deadline_s

    async def status(self) -> recommender_pb2.ModelStatus:
        return await self.admin.Status(recommender_pb2.StatusRequest(), timeout=self.deadline_s)

    async def promote(self, version: str, uri: str) -> recommender_pb2.ModelStatus:
        return await self.admin.Promote(recommender_pb2.PromoteRequest(version=version, uri=uri),
                                        timeout=max(self.deadline_s, 300.0))

    async def rollback(self) -> recommender_pb2.ModelStatus:
        return await self.admin.Rollback(recommender_pb2.RollbackRequest(), timeout=self.deadline_s)

    async def split(self, version: str, percent: float, uri: str) -> recommender_pb2.ModelStatus:
        request = recommender_pb2.SetSplitRequest(version=version, percent=percent, uri=uri)
        return await self.admin.SetSplit(request, timeout=max(self.deadline_s, 300.0))

    async def recommend(self, user_id: str, k: int) -> recommender_pb2.RecommendResponse:
        return await self.recommender.Recommend(
            recommender_pb2.RecommendRequest(user_id=user_id, k=k), timeout=self.deadline_s,
            metadata=self._metadata)

    async def similar(self, item_id: str, k: int) -> recommender_pb2.SimilarItemsResponse:
        return await self.recommender.SimilarItems(
            recommender_pb2.SimilarItemsRequest(item_id=item_id, k=k), timeout=self.deadline_s,
            metadata=self._metadata)

    async def close(self) -> None:
        await self._public.close()
        await self._admin.close()


@dataclass(frozen=True)
class UserState:
    """What the online state holds of one user."""

    vector_version: str | None
    vector_written_ms: int | None
    recent: list[tuple[str, int]]  # (item id, event time ms), newest first
    acts: dict[str, list[tuple[str, int]]]  # event type name -> (item id, time ms), newest first


class OnlineState:
    """A user's part of the Redis online state, read as serving reads it."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self._client = client
        self._keys = RedisKeys(prefix)

    async def user(self, user_id: str, count: int = 20) -> UserState:
        pipe = self._client.pipeline(transaction=False)
        pipe.hmget(self._keys.user_vector(user_id), [VERSION_FIELD, WRITTEN_AT_FIELD])
        pipe.zrevrange(self._keys.seen(user_id), 0, count - 1, withscores=True)
        for number in EVENT_TYPE_NAMES:
            pipe.zrevrange(self._keys.acts(number, user_id), 0, count - 1, withscores=True)
        version, written, recent, *acts = _unpack(await pipe.execute())
        return UserState(
            vector_version=version, vector_written_ms=written, recent=recent,
            acts={name: items for name, items in zip(EVENT_TYPE_NAMES.values(), acts) if items},
        )

    async def close(self) -> None:
        await self._client.aclose()


def _unpack(results: list[Any]) -> tuple[Any, ...]:
    """``(version, written_ms, recent, *acts)`` from the pipeline's raw answers."""
    version_raw, written_raw = results[0]

    def pairs(raw: list[tuple[bytes, float]]) -> list[tuple[str, int]]:
        return [(member.decode(), int(score)) for member, score in raw]

    return (version_raw.decode() if version_raw else None,
            int(written_raw) if written_raw else None,
            *(pairs(raw) for raw in results[1:]))


@dataclass(frozen=True)
class Manifest:
    """One version in the artifact store, with its role in ``production.json``."""

    version: str
    manifest: dict[str, Any]
    production: bool
    previous: bool
    path: Path


def manifests(store: Path) -> list[Manifest]:
    """Every readable version of the store, newest first; unreadable ones are logged."""
    pointer = read_production(store) if store.is_dir() else None
    found = []
    for version in reversed(list_versions(store)):
        try:
            manifest = read_manifest(store / version, version)
        except ArtifactError as error:
            log.warning("artifact %s: %s", version, error)
            continue
        found.append(Manifest(version, manifest, production=bool(pointer and pointer.version == version),
                              previous=bool(pointer and pointer.previous == version),
                              path=(store / version).resolve()))
    return found
