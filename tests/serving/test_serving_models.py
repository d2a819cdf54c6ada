"""Pure parts of versions, experiments, diversity, explanations, auth and the report."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.deletions import Deletions
from contracts.experiments import compute
from protos import events_pb2, recommender_pb2
from serving.auth import accepted, token_of
from serving.catalog import Catalog
from serving.cli.report import kept
from serving.errors import InvalidRequest, ModelNotLoaded
from serving.explain import anchors, mean_vector, similar_to
from serving.filters import Filters
from serving.index import ItemIndex
from serving.models import BUCKETS, Model, Models, Routing, bucket, in_candidate
from serving.ranking import Candidate, merge

from serving.requests import Limits, parse_batch, parse_recommend

LIMITS = Limits(max_k=20, max_exclude=3, max_categories=2, max_id_chars=10, max_track_events=2,
                max_batch=2)


def test_bucket_is_stable_and_spreads_users_evenly() -> None:
    assert bucket("user-1") == bucket("user-1")  # blake2b: no per-process hash seed
    buckets = [bucket(f"user-{n}") for n in range(20_000)]
    assert all(0 <= b < BUCKETS for b in buckets)
    share = sum(in_candidate(f"user-{n}", 10) for n in range(20_000)) / 20_000
    assert 0.09 < share < 0.11
    assert not any(in_candidate(f"user-{n}", 0) for n in range(1000))
    assert all(in_candidate(f"user-{n}", 100) for n in range(1000))


def test_a_bigger_split_keeps_the_users_already_in_the_candidate() -> None:
    users = [f"u{n}" for n in range(5000)]
    at_10 = {u for u in users if in_candidate(u, 10)}
    at_30 = {u for u in users if in_candidate(u, 30)}
    assert at_10 < at_30


def test_routing_of_a_record_sends_the_split_to_the_candidate() -> None:
    routing = Routing.of(events_pb2.Routing(production="a", previous="p", candidate="b", percent=100))
    assert routing == Routing(production="a", previous="p", candidate="b", percent=100)
    assert routing.version_for("anyone") == "b" and routing.versions() == ["a", "p", "b"]
    assert Routing.of(events_pb2.Routing(production="a")).version_for("anyone") == "a"


def test_models_hold_only_the_versions_routing_names() -> None:
    models = Models(Model("a", ItemIndex(2)))
    for version in ("b", "c"):
        models.add(Model(version, ItemIndex(2)))
    models.route(Routing("b", "a"))
    assert {m.version for m in models.loaded()} == {"a", "b"}  # c is dropped
    with pytest.raises(ModelNotLoaded):
        models.route(Routing("c", "b"))
    assert models.production.version == "b"  # a routing naming an unheld version changes nothing
    models.route(Routing("b", "a", "a", 100))
    assert models.for_user("x").version == "a"


def _catalog() -> Catalog:
    catalog = Catalog()
    for n in range(8):
        catalog.put(events_pb2.Item(item_id=f"i{n}", title=f"T{n}", price=10.0 * n,
                                    categories=["Even" if n % 2 == 0 else "Odd"],
                                    availability=events_pb2.OUT_OF_STOCK if n == 6 else events_pb2.IN_STOCK))
    return catalog


def test_price_range_and_availability() -> None:
    catalog = _catalog()
    filters = Filters(min_price=20, max_price=60)
    allowed = [f"i{n}" for n in range(8) if filters.allows(f"i{n}", catalog.get(f"i{n}"))]
    assert allowed == ["i2", "i3", "i4", "i5"]  # i6 is out of stock
    assert not filters.allows("unknown", None) and Filters().allows("unknown", None)
    assert filters.narrows and not Filters(excluded=frozenset({"a"})).narrows


def test_category_cap_keeps_the_best_of_each_category() -> None:
    catalog = _catalog()

    def group(item_id: str) -> str | None:
        entry = catalog.get(item_id)
        return entry.categories[0] if entry else None

    ranked = [Candidate(f"i{n}", 1 - n / 10, "r") for n in range(8)] + [Candidate("x", 0, "r")]
    picked = merge([ranked], 5, lambda _: True, max_per_group=2, group=group)
    assert [c.item_id for c in picked] == ["i0", "i1", "i2", "i3", "x"]  # x has no category
    assert len(merge([ranked], 9, lambda _: True)) == 9


def test_explanations_point_at_the_closest_recent_item() -> None:
    shown = np.array([[1, 0], [0, 1], [0.8, 0.6]], np.float32)
    recent = np.array([[0, 1], [1, 0]], np.float32)
    assert anchors(shown, recent).tolist() == [1, 0, 1]
    # A seen item shown again is explained by another recent item, never by itself.
    same = np.array([[False, True], [False, False], [False, False]])
    assert anchors(shown, recent, same).tolist() == [0, 0, 1]
    assert anchors(shown[:1], recent[1:], same[:1, 1:]).tolist() == [-1]
    assert similar_to("Heat (1995)") == "similar to Heat (1995)"
    mean = mean_vector(np.array([[1, 0], [0, 1]], np.float32))
    assert mean is not None
    np.testing.assert_allclose(mean, [2 ** -0.5, 2 ** -0.5], atol=1e-6)
    assert mean_vector(np.array([[1, 0], [-1, 0]], np.float32)) is None
    assert mean_vector(np.empty((0, 2), np.float32)) is None


def test_batch_and_price_checks() -> None:
    single = recommender_pb2.RecommendRequest(user_id="u", k=3)
    assert len(parse_batch(recommender_pb2.RecommendBatchRequest(requests=[single, single]), LIMITS)) == 2
    with pytest.raises(InvalidRequest, match="at most 2"):
        parse_batch(recommender_pb2.RecommendBatchRequest(requests=[single] * 3), LIMITS)
    with pytest.raises(InvalidRequest, match="requests is empty"):
        parse_batch(recommender_pb2.RecommendBatchRequest(), LIMITS)
    bad = recommender_pb2.RecommendRequest(user_id="u", k=0)
    with pytest.raises(InvalidRequest, match=r"requests\[1\]: k must be"):
        parse_batch(recommender_pb2.RecommendBatchRequest(requests=[single, bad]), LIMITS)
    with pytest.raises(InvalidRequest, match="min_price 5.0 is above max_price 1.0"):
        parse_recommend(recommender_pb2.RecommendRequest(user_id="u", k=1, min_price=5, max_price=1), LIMITS)
    query = parse_recommend(recommender_pb2.RecommendRequest(user_id="u", k=1, max_price=0), LIMITS)
    assert (query.min_price, query.max_price) == (None, 0.0)


def test_bearer_tokens() -> None:
    assert token_of([("authorization", "Bearer abc")]) == "abc"
    assert token_of([("authorization", "Basic abc")]) is None
    assert token_of([]) is None
    assert accepted("abc", ["x", "abc"]) and not accepted("abd", ["abc"]) and not accepted(None, ["abc"])


def _served(rec_id: str, version: str, items: int = 3) -> events_pb2.RecommendationLog:
    return events_pb2.RecommendationLog(recommendation_id=rec_id, model_version=version,
                                        user_id="u", item_ids=[f"i{n}" for n in range(items)])


def _event(rec_id: str, kind: int) -> events_pb2.Event:
    return events_pb2.Event(event_id="e", user_id="u", item_id="i0", type=kind,  # type: ignore[arg-type]
                            recommendation_id=rec_id)


def test_report_joins_events_to_the_version_that_served_them() -> None:
    served = [_served("r1", "a"), _served("r2", "a"), _served("r3", "a"), _served("r4", "a"),
              _served("r5", "b"), _served("r6", "b"), _served("r1", "a")]  # r1 logged twice
    events = [_event("r1", events_pb2.CLICK), _event("r1", events_pb2.CLICK),
              _event("r1", events_pb2.PURCHASE), _event("r2", events_pb2.CLICK),
              _event("r5", events_pb2.CLICK), _event("r6", events_pb2.PURCHASE),
              _event("r3", events_pb2.VIEW), _event("", events_pb2.CLICK),
              _event("nope", events_pb2.CLICK)]
    reports, unattributed = compute(served, events)
    a, b = reports["a"], reports["b"]
    assert (a.served, a.items_shown, a.clicked, a.clicks, a.converted) == (4, 12, 2, 3, 1)
    assert (a.click_through, a.conversion) == (0.5, 0.25)
    assert (b.served, b.clicked, b.converted, b.click_through, b.conversion) == (2, 1, 1, 0.5, 0.5)
    assert unattributed == 1


def test_report_leaves_out_a_deleted_users_recommendations_and_events_before_the_deletion() -> None:
    deletions = Deletions({"ada": 2_000})
    served = [events_pb2.RecommendationLog(recommendation_id=r, model_version="a", user_id=u,
                                           item_ids=["i1"], served_at_ms=t)
              for r, u, t in (("r1", "ada", 1_000), ("r2", "ada", 3_000), ("r3", "bob", 1_000))]
    events = [events_pb2.Event(user_id=u, recommendation_id=r, type=events_pb2.CLICK, timestamp_ms=t)
              for r, u, t in (("r1", "ada", 1_500), ("r2", "ada", 3_500), ("r3", "bob", 1_500))]
    kept_served, kept_events = kept(served, events, deletions)
    assert [s.recommendation_id for s in kept_served] == ["r2", "r3"]
    assert [e.recommendation_id for e in kept_events] == ["r2", "r3"]
    reports, unattributed = compute(kept_served, kept_events)
    assert (reports["a"].served, reports["a"].clicked, unattributed) == (2, 2, 0)
