"""Checking requests against the configured limits; bad input raises InvalidRequest."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from contracts.events import (
    MAX_EVENT_BYTES,
    MAX_FUTURE_SKEW_MS,
    EventLimits,
    Violation,
    event_violations,
    size_violation,
)
from contracts.relations import RelationLimits, relation_violations
from protos import events_pb2, recommender_pb2
from serving.catalog import category_keys
from serving.errors import FieldViolation, InvalidRequest
from serving.settings import ServingSettings

# Field violations sent back per call, at most: they travel in one trailer, and a client's
# metadata limit (8 KiB by default) must hold them; the message counts every bad event.
MAX_VIOLATIONS = 20


@dataclass(frozen=True)
class Limits:
    """Request limits; beyond them a call is INVALID_ARGUMENT."""

    max_k: int
    max_exclude: int
    max_categories: int
    max_id_chars: int
    max_track_events: int
    max_batch: int = 100
    events: EventLimits = EventLimits(MAX_EVENT_BYTES, MAX_FUTURE_SKEW_MS)
    max_track_relations: int = 1000
    relations: RelationLimits = RelationLimits()

    @classmethod
    def from_settings(cls, settings: ServingSettings) -> Limits:
        return cls(
            max_k=settings.max_k,
            max_exclude=settings.max_exclude,
            max_categories=settings.max_categories,
            max_id_chars=settings.max_id_chars,
            max_track_events=settings.max_track_events,
            max_batch=settings.max_batch,
            events=EventLimits(settings.max_event_bytes, settings.max_future_skew_ms),
            max_track_relations=settings.max_track_relations,
            relations=RelationLimits(settings.max_relation_bytes, settings.max_future_skew_ms,
                                     settings.max_id_chars),
        )


@dataclass(frozen=True)
class RecommendQuery:
    """A checked ``RecommendRequest``; category names are case-folded."""

    user_id: str
    k: int
    exclude_item_ids: frozenset[str]
    include_categories: frozenset[str]
    exclude_categories: frozenset[str]
    min_price: float | None = None
    max_price: float | None = None
    max_per_category: int = 0
    include_seen: bool = False
    exclude_social: bool = False


@dataclass(frozen=True)
class SimilarQuery:
    """A checked ``SimilarItemsRequest``."""

    item_id: str
    k: int
    exclude_item_ids: frozenset[str]
    user_id: str = ""
    include_categories: frozenset[str] = frozenset()
    exclude_categories: frozenset[str] = frozenset()
    min_price: float | None = None
    max_price: float | None = None


def _check_id(name: str, value: str, limits: Limits) -> str:
    if not value:
        raise InvalidRequest(f"{name} is required")
    if len(value) > limits.max_id_chars:
        raise InvalidRequest(f"{name} is longer than {limits.max_id_chars} characters")
    return value


def _check_k(k: int, limits: Limits) -> int:
    if not 1 <= k <= limits.max_k:
        raise InvalidRequest(f"k must be between 1 and {limits.max_k}, got {k}")
    return k


def _check_list(name: str, values: Sequence[str], most: int) -> Sequence[str]:
    _check_count(name, len(values), most)
    return values


def _check_count(name: str, count: int, most: int) -> None:
    if count > most:
        raise InvalidRequest(f"{name} has {count} entries; at most {most} are allowed")


def _price_range(request: recommender_pb2.RecommendRequest | recommender_pb2.SimilarItemsRequest
                 ) -> tuple[float | None, float | None]:
    low = request.min_price if request.HasField("min_price") else None
    high = request.max_price if request.HasField("max_price") else None
    for name, value in (("min_price", low), ("max_price", high)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise InvalidRequest(f"{name} must be a finite number >= 0, got {value}")
    if low is not None and high is not None and low > high:
        raise InvalidRequest(f"min_price {low} is above max_price {high}")
    return low, high


_NONE: frozenset[str] = frozenset()


def _keys(name: str, values: Sequence[str], most: int) -> frozenset[str]:
    """Checked category filter keys; most requests have none, which costs nothing to build."""
    return category_keys(_check_list(name, values, most)) if values else _NONE


def parse_recommend(request: recommender_pb2.RecommendRequest, limits: Limits) -> RecommendQuery:
    """Check `request`; raises InvalidRequest naming the first field out of bounds."""
    low, high = _price_range(request)
    if request.max_per_category < 0:
        raise InvalidRequest(f"max_per_category must be >= 0, got {request.max_per_category}")
    return RecommendQuery(
        user_id=_check_id("user_id", request.user_id, limits),
        k=_check_k(request.k, limits),
        exclude_item_ids=frozenset(
            _check_list("exclude_item_ids", request.exclude_item_ids, limits.max_exclude)
        ) if request.exclude_item_ids else _NONE,
        include_categories=_keys("include_categories", request.include_categories,
                                 limits.max_categories),
        exclude_categories=_keys("exclude_categories", request.exclude_categories,
                                 limits.max_categories),
        min_price=low,
        max_price=high,
        max_per_category=request.max_per_category,
        include_seen=request.include_seen,
        exclude_social=request.exclude_social,
    )


def parse_batch(request: recommender_pb2.RecommendBatchRequest, limits: Limits) -> list[RecommendQuery]:
    """Every request of the batch checked; the message names the first bad one."""
    if not request.requests:
        raise InvalidRequest("requests is empty")
    _check_count("requests", len(request.requests), limits.max_batch)
    queries = []
    for position, single in enumerate(request.requests):
        try:
            queries.append(parse_recommend(single, limits))
        except InvalidRequest as error:
            raise InvalidRequest(f"requests[{position}]: {error}") from error
    return queries


def parse_similar(request: recommender_pb2.SimilarItemsRequest, limits: Limits) -> SimilarQuery:
    """Check `request`; raises InvalidRequest naming the first field out of bounds."""
    low, high = _price_range(request)
    if len(request.user_id) > limits.max_id_chars:
        raise InvalidRequest(f"user_id is longer than {limits.max_id_chars} characters")
    return SimilarQuery(
        item_id=_check_id("item_id", request.item_id, limits),
        k=_check_k(request.k, limits),
        exclude_item_ids=frozenset(
            _check_list("exclude_item_ids", request.exclude_item_ids, limits.max_exclude)
        ),
        user_id=request.user_id,
        include_categories=category_keys(
            _check_list("include_categories", request.include_categories, limits.max_categories)
        ),
        exclude_categories=category_keys(
            _check_list("exclude_categories", request.exclude_categories, limits.max_categories)
        ),
        min_price=low,
        max_price=high,
    )


def event_problems(event: events_pb2.Event, limits: Limits, *, now_ms: int) -> list[Violation]:
    """Every rule of contracts.events that `event` breaks, and a user id over the length
    limit (the Kafka key); empty when streams would accept it, catalog and dedupe aside."""
    found = event_violations(event, now_ms=now_ms, limits=limits.events)
    if len(event.user_id) > limits.max_id_chars:
        found.append(Violation("user_id", "too_long",
                               f"user_id is longer than {limits.max_id_chars} characters"))
    too_big = size_violation(event.ByteSize(), limits.events)
    if too_big is not None:
        found.append(too_big)
    return found


def check_events(request: recommender_pb2.TrackEventsRequest, limits: Limits, *,
                 now_ms: int) -> list[events_pb2.Event]:
    """The batch's events, if it is non-empty, within the count limit and every event is
    acceptable (:func:`event_problems`); else InvalidRequest with one field violation per
    problem (``events[3].event_id``, the dead-letter reason upper-cased), the first
    :data:`MAX_VIOLATIONS` of them. A call is accepted or refused whole."""
    events = list(request.events)
    return _all_or_none("events", events, limits.max_track_events,
                        lambda event: event_problems(event, limits, now_ms=now_ms))


def check_relations(request: recommender_pb2.TrackRelationsRequest, limits: Limits, *,
                    now_ms: int) -> list[events_pb2.Relation]:
    """The call's relations, if it is non-empty, within the count limit and every relation
    breaks no rule of contracts.relations; else InvalidRequest with field violations
    (``relations[2].followee_id``), as :func:`check_events`."""
    relations = list(request.relations)
    return _all_or_none("relations", relations, limits.max_track_relations,
                        lambda relation: relation_violations(relation, now_ms=now_ms,
                                                             limits=limits.relations))


Checked = TypeVar("Checked")


def _all_or_none(name: str, entries: list[Checked], most: int,
                 problems: Callable[[Checked], list[Violation]]) -> list[Checked]:
    if not entries:
        raise InvalidRequest(f"{name} is empty")
    _check_count(name, len(entries), most)
    violations: list[FieldViolation] = []
    bad = 0
    for position, entry in enumerate(entries):
        found = problems(entry)
        if found:
            bad += 1
            violations += [_field_violation(name, position, problem) for problem in found]
    if not violations:
        return entries
    first, more = violations[0], len(violations) - 1
    if more == 0:
        rest = ""
    elif len(violations) <= MAX_VIOLATIONS:
        rest = f" (and {more} more in the error details)"
    else:
        rest = f" (and {more} more; the error details hold the first {MAX_VIOLATIONS})"
    raise InvalidRequest(
        f"{bad} of {len(entries)} {name} {'is' if bad == 1 else 'are'} invalid, none was "
        f"written: {first.field}: {first.description}{rest}",
        violations[:MAX_VIOLATIONS],
    )


def _field_violation(name: str, position: int, problem: Violation) -> FieldViolation:
    path = f"{name}[{position}].{problem.field}" if problem.field else f"{name}[{position}]"
    return FieldViolation(path, problem.reason.upper(), problem.description)
