"""Checking requests against the configured limits; bad input raises InvalidRequest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protos import events_pb2, recommender_pb2
from serving.catalog import category_keys
from serving.errors import InvalidRequest
from serving.settings import ServingSettings


@dataclass(frozen=True)
class Limits:
    """Request limits; beyond them a call is INVALID_ARGUMENT."""

    max_k: int
    max_exclude: int
    max_categories: int
    max_id_chars: int
    max_track_events: int

    @classmethod
    def from_settings(cls, settings: ServingSettings) -> Limits:
        return cls(
            max_k=settings.max_k,
            max_exclude=settings.max_exclude,
            max_categories=settings.max_categories,
            max_id_chars=settings.max_id_chars,
            max_track_events=settings.max_track_events,
        )


@dataclass(frozen=True)
class RecommendQuery:
    """A checked ``RecommendRequest``; category names are case-folded."""

    user_id: str
    k: int
    exclude_item_ids: frozenset[str]
    include_categories: frozenset[str]
    exclude_categories: frozenset[str]


@dataclass(frozen=True)
class SimilarQuery:
    """A checked ``SimilarItemsRequest``."""

    item_id: str
    k: int
    exclude_item_ids: frozenset[str]


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


def parse_recommend(request: recommender_pb2.RecommendRequest, limits: Limits) -> RecommendQuery:
    """Check `request`; raises InvalidRequest naming the first field out of bounds."""
    return RecommendQuery(
        user_id=_check_id("user_id", request.user_id, limits),
        k=_check_k(request.k, limits),
        exclude_item_ids=frozenset(
            _check_list("exclude_item_ids", request.exclude_item_ids, limits.max_exclude)
        ),
        include_categories=category_keys(
            _check_list("include_categories", request.include_categories, limits.max_categories)
        ),
        exclude_categories=category_keys(
            _check_list("exclude_categories", request.exclude_categories, limits.max_categories)
        ),
    )


def parse_similar(request: recommender_pb2.SimilarItemsRequest, limits: Limits) -> SimilarQuery:
    """Check `request`; raises InvalidRequest naming the first field out of bounds."""
    return SimilarQuery(
        item_id=_check_id("item_id", request.item_id, limits),
        k=_check_k(request.k, limits),
        exclude_item_ids=frozenset(
            _check_list("exclude_item_ids", request.exclude_item_ids, limits.max_exclude)
        ),
    )


def check_events(request: recommender_pb2.TrackEventsRequest, limits: Limits) -> list[events_pb2.Event]:
    """The batch's events, if it is non-empty, within the limit and every event has a user.

    The user id is the Kafka key; every other check is the streams worker's, which
    dead-letters what it cannot accept.
    """
    events = list(request.events)
    if not events:
        raise InvalidRequest("events is empty")
    _check_count("events", len(events), limits.max_track_events)
    for position, event in enumerate(events):
        if not event.user_id:
            raise InvalidRequest(f"events[{position}].user_id is required")
        if len(event.user_id) > limits.max_id_chars:
            raise InvalidRequest(
                f"events[{position}].user_id is longer than {limits.max_id_chars} characters"
            )
    return events
