"""streams.settings: defaults, environment, and bad values that stop start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from contracts.security import async_redis_client
from contracts.social import DEFAULT_FANOUT_THRESHOLD, DEFAULT_FEED_CAP, DEFAULT_TAU_S, \
    DEFAULT_TYPE_WEIGHTS
from streams.metrics import StreamsMetrics
from streams.relations import RelationsConsumer
from streams.settings import DEFAULT_WEIGHTS, StreamsSettings
from streams.worker import graph_services, online_state


def test_defaults_are_the_local_contract_names() -> None:
    settings = StreamsSettings()
    assert (settings.topic_events, settings.topic_enriched, settings.topic_dlq) == (
        "events", "events.enriched", "events.dlq",
    )
    assert (settings.topic_items, settings.topic_item_vectors) == ("items", "item-vectors")
    assert settings.redis_prefix == "sr:"
    assert settings.weights == DEFAULT_WEIGHTS


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_STREAMS_TOPIC_EVENTS", "ev-x")
    monkeypatch.setenv("STREAMREC_STREAMS_WEIGHTS", '{"view": 1, "click": 2, "add_to_cart": 3, '
                       '"purchase": 9, "rating": 1}')
    settings = StreamsSettings()
    assert settings.topic_events == "ev-x"
    assert settings.weights["purchase"] == 9


@pytest.mark.parametrize(
    "weights",
    [
        {**DEFAULT_WEIGHTS, "like": 1.0},
        {key: value for key, value in DEFAULT_WEIGHTS.items() if key != "view"},
        {**DEFAULT_WEIGHTS, "view": 0.0},
    ],
)
def test_bad_weights(weights: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        StreamsSettings(weights=weights)


def test_unknown_setting_is_rejected() -> None:
    with pytest.raises(ValidationError):
        StreamsSettings(topic_evnets="typo")  # type: ignore[call-arg]


def test_bootstrap_list() -> None:
    assert StreamsSettings(kafka_bootstrap="a:1, b:2").bootstrap_servers() == ["a:1", "b:2"]


def test_dedupe_window_is_a_week_of_event_time_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert StreamsSettings().dedupe_window_s == 7 * 24 * 3600
    monkeypatch.setenv("STREAMREC_STREAMS_DEDUPE_WINDOW_S", "94608000")  # MovieLens re-imports
    assert StreamsSettings().dedupe_window_s == 94_608_000
    with pytest.raises(ValidationError):
        StreamsSettings(dedupe_window_s=0)
    assert StreamsSettings(app_id="a").dedupe_changelog() == "a-dedupe-changelog"


def test_social_defaults_are_the_contract_s_and_weights_come_as_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = StreamsSettings()
    assert settings.relations_enabled and settings.topic_relations == "relations"
    assert (settings.fanout_threshold, settings.social_feed_cap, settings.social_tau_s) == (
        DEFAULT_FANOUT_THRESHOLD, DEFAULT_FEED_CAP, DEFAULT_TAU_S)
    assert settings.social_weights == DEFAULT_TYPE_WEIGHTS
    assert settings.social_backfill == 20
    assert StreamsSettings(app_id="shop").relations_group() == "shop-relations"
    monkeypatch.setenv("STREAMREC_STREAMS_SOCIAL_WEIGHTS", '{"purchase": 5}')
    assert StreamsSettings().social_weights == {"purchase": 5.0}


@pytest.mark.parametrize("weights", [{"like": 1.0}, {"view": 0.0}, {"purchase": -1.0}])
def test_bad_social_weights(weights: dict[str, float]) -> None:
    with pytest.raises(ValidationError, match="social_weights"):
        StreamsSettings(social_weights=weights)


def test_the_relations_reader_can_be_switched_off() -> None:
    on = StreamsSettings(app_id="shop", topic_relations="rel")
    off = StreamsSettings(relations_enabled=False)
    metrics = StreamsMetrics()
    (reader,) = graph_services(on, online_state(on, Redis(), metrics), metrics)
    assert isinstance(reader, RelationsConsumer)
    assert (reader.topic, reader.group) == ("rel", "shop-relations")
    assert graph_services(off, online_state(off, Redis(), metrics), metrics) == []


def test_a_cluster_url_runs_the_relations_reader_and_the_fan_out_only_with_it() -> None:
    url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"
    on = StreamsSettings(redis_url=url)
    online = online_state(on, async_redis_client(on.redis_url, on))
    (reader,) = graph_services(on, online, StreamsMetrics())
    assert isinstance(reader, RelationsConsumer)
    assert online.regressed() == {}  # a cluster writer; nothing lost yet
    assert online.fans_out
    off = StreamsSettings(redis_url=url, relations_enabled=False)
    online = online_state(off, async_redis_client(off.redis_url, off))
    assert graph_services(off, online, StreamsMetrics()) == []
    assert not online.fans_out  # no graph: no followers to read for every batch
