"""The model versions serving holds and which one answers a user.

At most three versions are loaded: ``production``, the ``previous`` one (for a one-call
rollback) and an experiment ``candidate`` that gets ``percent`` of users. A user's arm is
a stable hash of the user id (:func:`bucket`), so a user sees one version across calls
and replicas. Every change replaces one immutable :class:`Routing` (from a record on
``model-routing``, :mod:`serving.routing`), so a request reads one consistent view
(model and index of the same version) without a lock.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from protos import events_pb2
from serving.errors import ModelNotLoaded
from serving.index import ItemIndex

log = logging.getLogger(__name__)

BUCKETS = 10_000  # a split is honoured to 0.01 %


def bucket(user_id: str) -> int:
    """The user's bucket in [0, BUCKETS): the same on every call, process and machine."""
    digest = hashlib.blake2b(user_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def in_candidate(user_id: str, percent: float) -> bool:
    """True when the user falls into the first `percent` % of buckets."""
    return bucket(user_id) < round(percent * BUCKETS / 100)


@dataclass(frozen=True)
class Model:
    """One loaded version: its index holds vectors of that version only."""

    version: str
    index: ItemIndex
    uri: str = ""  # the artifact directory it was read from; empty: production.json's store


@dataclass(frozen=True)
class Routing:
    """Which loaded version plays which role."""

    production: str
    previous: str | None = None
    candidate: str | None = None
    percent: float = 0.0

    def version_for(self, user_id: str) -> str:
        """The version that answers `user_id`."""
        if self.candidate is not None and self.percent > 0 and in_candidate(user_id, self.percent):
            return self.candidate
        return self.production

    @classmethod
    def of(cls, record: events_pb2.Routing) -> Routing:
        """The roles a ``model-routing`` record names."""
        return cls(production=record.production, previous=record.previous or None,
                   candidate=record.candidate or None,
                   percent=record.percent if record.candidate else 0.0)

    def versions(self) -> list[str]:
        """The versions it names, production first."""
        return [v for v in (self.production, self.previous, self.candidate) if v]


class Models:
    """The loaded versions and the current routing; swapped atomically."""

    def __init__(self, first: Model) -> None:
        self._models: dict[str, Model] = {first.version: first}
        self.routing = Routing(production=first.version)

    def get(self, version: str) -> Model | None:
        return self._models.get(version)

    def loaded(self) -> list[Model]:
        return list(self._models.values())

    @property
    def production(self) -> Model:
        return self._models[self.routing.production]

    def for_user(self, user_id: str) -> Model:
        """The model that answers `user_id` under the current split."""
        models, routing = self._models, self.routing  # one consistent pair
        return models.get(routing.version_for(user_id)) or models[routing.production]

    def add(self, model: Model) -> None:
        """Hold `model` (replacing a loaded one of the same version)."""
        self._models = {**self._models, model.version: model}

    def route(self, routing: Routing) -> Routing:
        """Switch to `routing` (every version it names is held), then drop the versions
        it no longer names."""
        missing = [v for v in routing.versions() if v not in self._models]
        if missing:
            raise ModelNotLoaded(f"model versions {missing} are not loaded")
        self.routing = routing
        keep = {routing.production, routing.previous, routing.candidate}
        self._models = {v: m for v, m in self._models.items() if v in keep}
        log.info("routing: production %s, previous %s, candidate %s at %.2f %%",
                 routing.production, routing.previous, routing.candidate, routing.percent)
        return routing
