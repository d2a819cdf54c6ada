"""The model versions serving holds and which one answers a user.

At most three versions are loaded: ``production``, the ``previous`` one (for a one-call
rollback) and an experiment ``candidate`` that gets ``percent`` of users. A user's arm is
a stable hash of the user id (:func:`bucket`), so a user sees one version across calls
and replicas. Every change replaces one immutable :class:`Routing`, so a request reads
one consistent view (model and index of the same version) without a lock.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace

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


def promoted(routing: Routing, version: str) -> Routing:
    """`version` becomes production, production becomes previous; the split ends if the
    candidate is the one promoted."""
    if version == routing.production:
        return routing
    candidate = None if routing.candidate == version else routing.candidate
    return Routing(production=version, previous=routing.production, candidate=candidate,
                   percent=routing.percent if candidate else 0.0)


def rolled_back(routing: Routing) -> Routing:
    """Production and previous swap places."""
    if routing.previous is None:
        raise ModelNotLoaded("there is no previous version to roll back to")
    return replace(routing, production=routing.previous, previous=routing.production)


def split(routing: Routing, version: str, percent: float) -> Routing:
    """`percent` % of users go to `version`; 0 % ends the experiment."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be between 0 and 100, got {percent}")
    if percent == 0:
        return replace(routing, candidate=None, percent=0.0)
    if version == routing.production:
        raise ValueError(f"{version!r} is production already")
    return replace(routing, candidate=version, percent=percent)


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

    def promote(self, version: str) -> Routing:
        self._require(version)
        return self._apply(promoted(self.routing, version))

    def rollback(self) -> Routing:
        return self._apply(rolled_back(self.routing))

    def set_split(self, version: str, percent: float) -> Routing:
        if percent:
            self._require(version)
        return self._apply(split(self.routing, version, percent))

    def _require(self, version: str) -> None:
        if version not in self._models:
            raise ModelNotLoaded(f"model version {version!r} is not loaded")

    def _apply(self, routing: Routing) -> Routing:
        """Switch to `routing`, then drop versions it no longer names."""
        self.routing = routing
        keep = {routing.production, routing.previous, routing.candidate}
        self._models = {v: m for v, m in self._models.items() if v in keep}
        log.info("routing: production %s, previous %s, candidate %s at %.2f %%",
                 routing.production, routing.previous, routing.candidate, routing.percent)
        return routing
