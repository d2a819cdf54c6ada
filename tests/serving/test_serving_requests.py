"""Request checks, settings limits and the one error -> gRPC status table."""

from __future__ import annotations

import grpc
import pytest
from pydantic import ValidationError

from protos import events_pb2, recommender_pb2
from serving.errors import (
    STATUS_CODES,
    ArtifactError,
    BrokerUnavailable,
    InvalidRequest,
    ItemNotFound,
    ServingError,
    StoreUnavailable,
    status_code,
)
from serving.requests import Limits, check_events, parse_recommend, parse_similar
from serving.settings import ServingSettings

LIMITS = Limits(max_k=20, max_exclude=3, max_categories=2, max_id_chars=10, max_track_events=2)


def test_recommend_request_is_parsed_with_folded_categories() -> None:
    query = parse_recommend(
        recommender_pb2.RecommendRequest(
            user_id="u1", k=20, exclude_item_ids=["a", "b", "a"],
            include_categories=["Comedy"], exclude_categories=[" Horror", ""],
        ),
        LIMITS,
    )
    assert (query.user_id, query.k) == ("u1", 20)
    assert query.exclude_item_ids == {"a", "b"}
    assert query.include_categories == {"comedy"}
    assert query.exclude_categories == {"horror"}


@pytest.mark.parametrize(
    ("request_kwargs", "message"),
    [
        ({"user_id": "u", "k": 0}, "k must be between 1 and 20, got 0"),
        ({"user_id": "u", "k": 21}, "k must be between 1 and 20, got 21"),
        ({"user_id": "u", "k": -3}, "k must be between 1 and 20, got -3"),
        ({"user_id": "", "k": 5}, "user_id is required"),
        ({"user_id": "u" * 11, "k": 5}, "user_id is longer than 10 characters"),
        ({"user_id": "u", "k": 5, "exclude_item_ids": list("abcd")},
         "exclude_item_ids has 4 entries; at most 3 are allowed"),
        ({"user_id": "u", "k": 5, "include_categories": list("xyz")},
         "include_categories has 3 entries; at most 2 are allowed"),
        ({"user_id": "u", "k": 5, "exclude_categories": list("xyz")},
         "exclude_categories has 3 entries"),
    ],
)
def test_bad_recommend_requests_are_invalid(request_kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_recommend(recommender_pb2.RecommendRequest(**request_kwargs), LIMITS)  # type: ignore[arg-type]


def test_similar_request_checks() -> None:
    query = parse_similar(recommender_pb2.SimilarItemsRequest(item_id="i", k=3), LIMITS)
    assert (query.item_id, query.k, query.exclude_item_ids) == ("i", 3, frozenset())
    with pytest.raises(InvalidRequest, match="item_id is required"):
        parse_similar(recommender_pb2.SimilarItemsRequest(k=3), LIMITS)
    with pytest.raises(InvalidRequest, match="k must be between"):
        parse_similar(recommender_pb2.SimilarItemsRequest(item_id="i", k=0), LIMITS)


def test_event_batches_must_be_non_empty_bounded_and_keyed() -> None:
    event = events_pb2.Event(event_id="e", user_id="u", item_id="i", type=events_pb2.VIEW)
    assert check_events(recommender_pb2.TrackEventsRequest(events=[event]), LIMITS) == [event]
    with pytest.raises(InvalidRequest, match="events is empty"):
        check_events(recommender_pb2.TrackEventsRequest(), LIMITS)
    with pytest.raises(InvalidRequest, match="events has 3 entries; at most 2"):
        check_events(recommender_pb2.TrackEventsRequest(events=[event] * 3), LIMITS)
    with pytest.raises(InvalidRequest, match=r"events\[1\].user_id is required"):
        check_events(recommender_pb2.TrackEventsRequest(events=[event, events_pb2.Event()]), LIMITS)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidRequest("bad k"), grpc.StatusCode.INVALID_ARGUMENT),
        (ItemNotFound("no such item"), grpc.StatusCode.NOT_FOUND),
        (StoreUnavailable("redis down"), grpc.StatusCode.UNAVAILABLE),
        (BrokerUnavailable("kafka down"), grpc.StatusCode.UNAVAILABLE),
        (ArtifactError("bad artifact"), grpc.StatusCode.FAILED_PRECONDITION),
        (ServingError("unexpected"), grpc.StatusCode.INTERNAL),
    ],
)
def test_each_error_maps_to_its_status_code(error: ServingError, code: grpc.StatusCode) -> None:
    assert status_code(error) == code


def test_a_new_subclass_takes_its_ancestors_code() -> None:
    class TooManyCategories(InvalidRequest):
        """A narrower cause."""

    assert status_code(TooManyCategories("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert all(issubclass(cls, ServingError) for cls in STATUS_CODES)


def test_settings_read_the_environment_and_reject_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_SERVING_MAX_K", "7")
    monkeypatch.setenv("STREAMREC_SERVING_TOPIC_ITEMS", "items.test")
    settings = ServingSettings()
    assert (settings.max_k, settings.topic_items, settings.port) == (7, "items.test", 50051)
    assert Limits.from_settings(settings).max_k == 7
    with pytest.raises(ValidationError, match="max_candidates must be at least max_k"):
        ServingSettings(max_k=50, max_candidates=10)
    with pytest.raises(ValidationError):
        ServingSettings(port=70000)
    with pytest.raises(ValidationError):
        ServingSettings(unknown_field=1)  # type: ignore[call-arg]
