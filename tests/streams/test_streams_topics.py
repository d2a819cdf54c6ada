"""streams.topics: the topic shapes and the checks on existing topics."""

from __future__ import annotations

from streams.settings import StreamsSettings
from streams.topics import TopicSpec, check_shape, topic_specs


def test_specs_follow_the_contract() -> None:
    settings = StreamsSettings(topic_partitions=6, topic_events="ev", topic_item_vectors="iv",
                               app_id="app")
    specs = {spec.name: spec for spec in topic_specs(settings)}
    assert set(specs) == {"ev", "events.enriched", "events.dlq", "items", "iv", "models",
                          "app-users-changelog", "app-dedupe-changelog"}
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


def test_events_with_other_partition_count_is_fatal() -> None:
    spec = TopicSpec("events", 4, 1, copartitioned=True)
    fatal, warnings = check_shape(spec, 8, None)
    assert len(fatal) == 1 and "TOPIC_PARTITIONS=8" in fatal[0]
    assert warnings == []
    assert check_shape(spec, 4, None) == ([], [])


def test_uncompacted_catalog_topic_is_a_warning() -> None:
    spec = TopicSpec("items", 4, 1, {"cleanup.policy": "compact"})
    fatal, warnings = check_shape(spec, 3, "delete")
    assert fatal == [] and len(warnings) == 1
    assert check_shape(spec, 3, "compact,delete") == ([], [])
