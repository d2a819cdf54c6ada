"""The routing record on ``model-routing``: which versions serve and how users split.

Each record is the whole routing (``events_pb2.Routing``), never a change, and the last
record in offset order is in force. So a reader that starts late and reads the compacted
topic (the last record per key) from the beginning ends where a reader that followed
every record is. The topic has one partition: every writer (serving's Admin service,
training's releases and rollbacks) lands in one order that every process applies.

A writer takes the record in force, computes the next one with :func:`promoted`,
:func:`rolled_back` or :func:`split` (revision + 1) and writes it. Two writers racing
from the same revision both write; the later record wins whole (changes are rare
operator and release actions, and the answer of each shows what is in force).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from google.protobuf.message import DecodeError

from contracts.topics import ROUTING
from protos.events_pb2 import Routing

log = logging.getLogger(__name__)

TOPIC = ROUTING.default_name
KEY = b"routing"
PARTITIONS = ROUTING.partitions or 1  # one order for every writer

Record = tuple[bytes | None, bytes | None]  # (key, value) in offset order


def problem(routing: Routing) -> str | None:
    """Why `routing` cannot be in force, or None when it can."""
    if not routing.production:
        return "no production version"
    if not 0 <= routing.percent <= 100:
        return f"percent {routing.percent} is not between 0 and 100"
    if routing.candidate and routing.candidate == routing.production:
        return f"candidate {routing.candidate!r} is production"
    if routing.percent and not routing.candidate:
        return f"{routing.percent} % of users for no candidate"
    return None


def fold(current: Routing | None, records: Iterable[Record]) -> Routing | None:
    """The routing in force after `records`, starting from `current` (None: no record
    yet, so ``production.json``). Records of other keys are ignored; undecodable or
    invalid ones are skipped (logged); a tombstone goes back to no record."""
    for key, value in records:
        if key != KEY:
            continue
        if value is None:
            current = None
            continue
        try:
            routing = Routing.FromString(value)
        except DecodeError:
            log.warning("undecodable routing record skipped")
            continue
        reason = problem(routing)
        if reason is not None:
            log.warning("routing record revision %s skipped: %s", routing.revision, reason)
            continue
        current = routing
    return current


def uri_of(routing: Routing, version: str) -> str:
    """Where `routing` says `version` is stored; empty when it does not name it."""
    for name, uri in ((routing.production, routing.production_uri),
                      (routing.previous, routing.previous_uri),
                      (routing.candidate, routing.candidate_uri)):
        if version and name == version:
            return uri
    return ""


def _next(current: Routing, change: str, by: str, at_ms: int) -> Routing:
    return Routing(revision=current.revision + 1, change=change, changed_by=by, changed_at_ms=at_ms)


def promoted(current: Routing, version: str, uri: str, *, by: str, at_ms: int) -> Routing:
    """`version` (stored at `uri`, or where `current` says) is production, production is
    previous; the experiment ends if its candidate is the one promoted."""
    if not version:
        raise ValueError("version is required")
    routing = _next(current, "promote", by, at_ms)
    routing.production, routing.production_uri = version, uri or uri_of(current, version)
    if version == current.production:
        routing.previous, routing.previous_uri = current.previous, current.previous_uri
    else:
        routing.previous, routing.previous_uri = current.production, current.production_uri
    if current.candidate and current.candidate != version:
        routing.candidate, routing.candidate_uri = current.candidate, current.candidate_uri
        routing.percent = current.percent
    return routing


def rolled_back(current: Routing, *, by: str, at_ms: int) -> Routing:
    """Production and previous swap places; the experiment stays unless its candidate
    is the version rolled back to."""
    if not current.previous:
        raise ValueError("there is no previous version to roll back to")
    routing = promoted(current, current.previous, current.previous_uri, by=by, at_ms=at_ms)
    routing.change = "rollback"
    return routing


def split(current: Routing, version: str, percent: float, uri: str, *, by: str,
          at_ms: int) -> Routing:
    """`percent` % of users go to `version` (stored at `uri`); 0 % ends the experiment."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be between 0 and 100, got {percent}")
    routing = _next(current, "split", by, at_ms)
    routing.production, routing.production_uri = current.production, current.production_uri
    routing.previous, routing.previous_uri = current.previous, current.previous_uri
    if percent == 0:
        return routing
    if not version:
        raise ValueError("version is required")
    if version == current.production:
        raise ValueError(f"{version!r} is production already")
    routing.candidate, routing.candidate_uri = version, uri or uri_of(current, version)
    routing.percent = percent
    return routing
