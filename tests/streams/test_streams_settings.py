"""streams.settings: defaults, environment, and bad values that stop start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streams.settings import DEFAULT_WEIGHTS, StreamsSettings


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
