"""Request checks, settings limits and the one error -> gRPC status table."""

from __future__ import annotations

import grpc
import pytest
from pydantic import ValidationError

from contracts.events import EventLimits
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
from serving.requests import (
    MAX_VIOLATIONS,
    Limits,
    check_events,
    check_relations,
    parse_recommend,
    parse_similar,
)
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


NOW_MS = 1_790_000_000_000


def _event(**changes: object) -> events_pb2.Event:
    fields: dict[str, object] = dict(event_id="e", user_id="u", item_id="i", type=events_pb2.VIEW,
                                     timestamp_ms=NOW_MS - 1000)
    fields.update(changes)
    return events_pb2.Event(**fields)  # type: ignore[arg-type]


def _check(*events: events_pb2.Event, limits: Limits = LIMITS) -> list[events_pb2.Event]:
    return check_events(recommender_pb2.TrackEventsRequest(events=events), limits, now_ms=NOW_MS)


def _violations(*events: events_pb2.Event, limits: Limits = LIMITS) -> list[tuple[str, str]]:
    with pytest.raises(InvalidRequest) as raised:
        _check(*events, limits=limits)
    return [(v.field, v.reason) for v in raised.value.violations]


def test_event_batches_must_be_non_empty_and_bounded() -> None:
    event = _event()
    assert _check(event) == [event]
    with pytest.raises(InvalidRequest, match="events is empty"):
        _check()
    with pytest.raises(InvalidRequest, match="events has 3 entries; at most 2"):
        _check(event, event, event)


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"event_id": ""}, "events[1].event_id", "MISSING_FIELD"),
        ({"user_id": ""}, "events[1].user_id", "MISSING_FIELD"),
        ({"item_id": ""}, "events[1].item_id", "MISSING_FIELD"),
        ({"timestamp_ms": 0}, "events[1].timestamp_ms", "MISSING_FIELD"),
        ({"type": events_pb2.EVENT_TYPE_UNSPECIFIED}, "events[1].type", "UNKNOWN_EVENT_TYPE"),
        ({"type": 42}, "events[1].type", "UNKNOWN_EVENT_TYPE"),
        ({"timestamp_ms": 5}, "events[1].timestamp_ms", "BAD_TIMESTAMP"),
        ({"timestamp_ms": NOW_MS + 5 * 60 * 1000 + 1}, "events[1].timestamp_ms", "BAD_TIMESTAMP"),
        ({"value": float("nan")}, "events[1].value", "BAD_VALUE"),
        ({"user_id": "u" * 11}, "events[1].user_id", "TOO_LONG"),
        ({"properties": {"blob": "x" * 70_000}}, "events[1]", "OVERSIZED"),
    ],
)
def test_each_structural_rule_names_the_event_and_field(
    changes: dict[str, object], field: str, reason: str
) -> None:
    assert _violations(_event(), _event(**changes)) == [(field, reason)]


def test_every_bad_event_is_reported_and_the_message_counts_them() -> None:
    with pytest.raises(InvalidRequest) as raised:
        _check(_event(event_id="", type=0), _event(), limits=Limits(
            max_k=20, max_exclude=3, max_categories=2, max_id_chars=10, max_track_events=3))
    assert [(v.field, v.reason) for v in raised.value.violations] == [
        ("events[0].event_id", "MISSING_FIELD"), ("events[0].type", "UNKNOWN_EVENT_TYPE")]
    assert str(raised.value) == ("1 of 2 events is invalid, none was written: events[0].event_id: "
                                 "event_id is empty (and 1 more in the error details)")
    assert raised.value.violations[1].description == "type 0 is not a known EventType"


def test_the_size_limit_is_the_configured_one_and_reports_are_capped() -> None:
    small = Limits(max_k=20, max_exclude=3, max_categories=2, max_id_chars=10,
                   max_track_events=100, events=EventLimits(max_bytes=64, max_future_skew_ms=0))
    assert _violations(_event(properties={"k": "v" * 64}), limits=small) == [("events[0]", "OVERSIZED")]
    assert _violations(_event(timestamp_ms=NOW_MS + 1), limits=small) == [
        ("events[0].timestamp_ms", "BAD_TIMESTAMP")]
    with pytest.raises(InvalidRequest, match="^60 of 60 events are invalid") as raised:
        _check(*[_event(event_id="")] * 60, limits=small)
    assert len(raised.value.violations) == MAX_VIOLATIONS
    assert str(raised.value).endswith(f"(and 59 more; the error details hold the first {MAX_VIOLATIONS})")


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


def test_relation_limits_come_from_the_settings_and_bound_each_call() -> None:
    limits = Limits.from_settings(ServingSettings(max_id_chars=5, max_track_relations=2,
                                                  max_relation_bytes=64))
    assert (limits.max_track_relations, limits.relations.max_id_chars,
            limits.relations.max_bytes) == (2, 5, 64)
    ok = events_pb2.Relation(follower_id="u1", followee_id="u2", kind=events_pb2.FOLLOW,
                             timestamp_ms=NOW_MS)
    long_id = events_pb2.Relation(follower_id="u123456", followee_id="u2",
                                  kind=events_pb2.FRIEND, timestamp_ms=NOW_MS)

    def check(*relations: events_pb2.Relation) -> list[events_pb2.Relation]:
        return check_relations(recommender_pb2.TrackRelationsRequest(relations=relations), limits,
                               now_ms=NOW_MS)

    assert check(ok) == [ok]
    with pytest.raises(InvalidRequest, match="relations has 3 entries; at most 2"):
        check(ok, ok, ok)
    with pytest.raises(InvalidRequest) as refused:
        check(ok, long_id)
    assert [(v.field, v.reason) for v in refused.value.violations] == [
        ("relations[1].follower_id", "TOO_LONG")]
    assert str(refused.value).startswith("1 of 2 relations is invalid, none was written")
