"""streams.topics: the worker's topics and their check at start; ``python -m streams
topics fix`` on the real broker."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.errors import TopicSetupError
from streams.settings import StreamsSettings
from streams.topics import FIX_COMMAND, TopicSetup, topic_specs

ROOT = Path(__file__).resolve().parents[2]


def test_specs_follow_the_contract() -> None:
    settings = StreamsSettings(topic_partitions=6, topic_events="ev", topic_item_vectors="iv",
                               app_id="app")
    specs = {spec.name: spec for spec in topic_specs(settings)}
    assert set(specs) == {"ev", "events.enriched", "events.dlq", "items", "iv", "models",
                          "relations", "app-users-changelog", "app-dedupe-changelog"}
    assert specs["relations"].compacted  # a deleted user's edges: tombstones
    assert specs.pop("models").partitions == 1  # releases stay in order
    assert all(spec.partitions == 6 for spec in specs.values())
    assert specs["items"].compacted and specs["iv"].compacted
    assert not specs["events.enriched"].compacted
    assert specs["events.enriched"].configs["retention.ms"] == str(settings.log_retention_ms)
    assert specs["ev"].copartitioned and not specs["items"].copartitioned
    # User states are restored per partition of events: the changelog must match it.
    assert specs["app-users-changelog"].copartitioned and specs["app-users-changelog"].compacted
    # So are the dedupe windows, whose records expire by tombstones.
    assert specs["app-dedupe-changelog"].copartitioned and specs["app-dedupe-changelog"].compacted


def test_relations_is_one_of_them_even_when_the_worker_does_not_read_it() -> None:
    settings = StreamsSettings(topic_relations="rel", relations_enabled=False)
    (relations,) = [s for s in topic_specs(settings) if s.name == "rel"]
    assert relations.compacted and relations.partitions == settings.topic_partitions


def _settings(kafka: str, suffix: str) -> dict[str, str]:
    names = {"events": "events", "enriched": "enriched", "dlq": "dlq", "items": "items",
             "item_vectors": "item-vectors", "models": "models", "relations": "relations"}
    env = {f"STREAMREC_STREAMS_TOPIC_{key.upper()}": f"{name}-{suffix}"
           for key, name in names.items()}
    return {**env, "STREAMREC_STREAMS_KAFKA_BOOTSTRAP": kafka,
            "STREAMREC_STREAMS_APP_ID": f"app-{suffix}"}


@pytest.mark.integration
async def test_start_reports_an_uncompacted_catalog_and_topics_fix_repairs_it(
    kafka_bootstrap: str, owned_topics: str, create_topics: Callable[..., list[str]],
    describe_topics: Callable[..., dict], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = _settings(kafka_bootstrap, owned_topics)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = StreamsSettings()
    (items,) = create_topics([settings.topic_items], config={"cleanup.policy": "delete"})
    with caplog.at_level(logging.WARNING):
        await TopicSetup(topic_specs(settings), bootstrap=kafka_bootstrap).on_start()
    lines = [r.getMessage() for r in caplog.records if "cleanup.policy" in r.getMessage()]
    assert len(lines) == 1 and items in lines[0] and FIX_COMMAND in lines[0]
    created = describe_topics([s.name for s in topic_specs(settings)])
    assert len(created) == len(topic_specs(settings))  # the missing ones were created meanwhile

    done = subprocess.run([sys.executable, "-m", "streams", "topics", "fix"],
                          env={**os.environ, **env}, cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{items}: cleanup.policy delete -> compact"
    assert describe_topics([items])[items][1]["cleanup.policy"] == "compact"


@pytest.mark.integration
async def test_events_with_another_partition_count_stop_start(
    kafka_bootstrap: str, owned_topics: str, create_topics: Callable[..., list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in _settings(kafka_bootstrap, owned_topics).items():
        monkeypatch.setenv(key, value)
    settings = StreamsSettings()
    create_topics([settings.topic_events], partitions=2)
    with pytest.raises(TopicSetupError, match="STREAMREC_STREAMS_TOPIC_PARTITIONS=2"):
        await TopicSetup(topic_specs(settings), bootstrap=kafka_bootstrap).on_start()
