"""contracts.topics: the contract's specs, and creating, checking and fixing topics on
the real broker under fresh names."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from contracts.topics import (
    ENRICHED, EVENTS, ITEMS, MODELS, RELATIONS, TopicContractError, TopicLayout, TopicSpec,
    apply_contract, check_shape, ensure_topics, mismatch_line, spec, wait_for_coordinator,
)

FIX = "python -m example topics fix"


def test_specs_follow_the_contract() -> None:
    layout = TopicLayout(topic_partitions=6, log_retention_ms=1234)
    items, enriched, models = (spec(ITEMS, "it", layout), spec(ENRICHED, "en", layout),
                               spec(MODELS, "mo", layout))
    assert items.configs == {"cleanup.policy": "compact"} and items.partitions == 6
    assert enriched.configs == {"cleanup.policy": "delete", "retention.ms": "1234"}
    assert models.partitions == 1  # releases stay in order
    assert spec(EVENTS, "ev", layout).configs == {"cleanup.policy": "delete"}
    assert spec(RELATIONS, "re", layout).configs == {"cleanup.policy": "compact"}  # edge state


def test_min_insync_replicas_is_set_on_created_topics_only_when_configured() -> None:
    assert "min.insync.replicas" not in spec(EVENTS, "ev", TopicLayout()).configs  # broker's
    layout = TopicLayout(topic_replication=3, topic_min_insync_replicas=2)
    events, models = spec(EVENTS, "ev", layout), spec(MODELS, "mo", layout)
    assert events.replication == 3 and events.configs["min.insync.replicas"] == "2"
    assert models.configs["min.insync.replicas"] == "2" and models.partitions == 1


def test_min_insync_replicas_above_the_replication_is_refused() -> None:
    with pytest.raises(ValueError, match="topic_min_insync_replicas=3 exceeds topic_replication=2"):
        TopicLayout(topic_replication=2, topic_min_insync_replicas=3)


def test_copartitioned_topic_with_other_partition_count_is_fatal() -> None:
    events = TopicSpec("events", 4, 1, {"cleanup.policy": "delete"}, copartitioned=True)
    fatal, mismatch = check_shape(events, 8, "delete")
    assert len(fatal) == 1 and "TOPIC_PARTITIONS=8" in fatal[0] and mismatch is None
    assert check_shape(events, 4, "delete") == ([], None)


def test_another_cleanup_policy_is_a_mismatch_with_its_fix() -> None:
    items = TopicSpec("items", 4, 1, {"cleanup.policy": "compact"})
    fatal, mismatch = check_shape(items, 3, "delete")
    assert fatal == [] and mismatch is not None
    assert check_shape(items, 3, "compact")[1] is None
    assert check_shape(items, 3, "compact,delete")[1] is not None
    line = mismatch_line(mismatch, bootstrap="k:9092", fix_command=FIX)
    assert "\n" not in line and FIX in line
    assert ("kafka-configs.sh --bootstrap-server k:9092 --alter --entity-type topics "
            "--entity-name items --add-config cleanup.policy=compact") in line




@pytest.mark.integration
async def test_missing_topics_are_created_with_their_contract_settings(
    kafka_bootstrap: str, owned_topics: str, describe_topics: Callable[..., dict]
) -> None:
    layout = TopicLayout(topic_partitions=3, log_retention_ms=86_400_000)
    specs = [spec(ITEMS, f"items-{owned_topics}", layout),
             spec(ENRICHED, f"enriched-{owned_topics}", layout),
             spec(MODELS, f"models-{owned_topics}", layout)]
    assert await ensure_topics(kafka_bootstrap, specs, client_id="t", fix_command=FIX) == []
    found = describe_topics([s.name for s in specs])
    items, enriched, models = (found[s.name] for s in specs)
    assert items[0] == 3 and items[1]["cleanup.policy"] == "compact"
    assert enriched[1]["cleanup.policy"] == "delete"
    assert enriched[1]["retention.ms"] == "86400000"
    assert models[0] == 1
    # A second start finds them and changes nothing.
    assert await ensure_topics(kafka_bootstrap, specs, client_id="t", fix_command=FIX) == []


@pytest.mark.integration
async def test_a_wrong_policy_is_one_line_with_the_fix_and_fix_applies_it(
    kafka_bootstrap: str, create_topics: Callable[..., list[str]], unique: str,
    describe_topics: Callable[..., dict], caplog: pytest.LogCaptureFixture,
) -> None:
    (name,) = create_topics([f"items-{unique}"], partitions=2,
                            config={"cleanup.policy": "delete", "max.message.bytes": "2000000"})
    items = spec(ITEMS, name, TopicLayout())
    with caplog.at_level(logging.WARNING, logger="contracts.topics"):
        mismatches = await ensure_topics(kafka_bootstrap, [items], client_id="t",
                                         fix_command=FIX)
    assert [m.actual for m in mismatches] == ["delete"]
    lines = [r.getMessage() for r in caplog.records if name in r.getMessage()]
    assert len(lines) == 1 and FIX in lines[0] and f"--entity-name {name}" in lines[0]

    assert await apply_contract(kafka_bootstrap, [items], client_id="t") == [
        f"{name}: cleanup.policy delete -> compact"]
    configs = describe_topics([name])[name][1]
    assert configs["cleanup.policy"] == "compact"
    assert configs["max.message.bytes"] == "2000000"  # the topic's other settings stay
    caplog.clear()
    assert await ensure_topics(kafka_bootstrap, [items], client_id="t", fix_command=FIX) == []
    assert not [r for r in caplog.records if name in r.getMessage()]


@pytest.mark.integration
async def test_copartitioned_mismatch_stops_start(
    kafka_bootstrap: str, create_topics: Callable[..., list[str]], unique: str
) -> None:
    (name,) = create_topics([f"events-{unique}"], partitions=2)
    events = spec(EVENTS, name, TopicLayout(topic_partitions=4), copartitioned=True)
    with pytest.raises(TopicContractError, match="TOPIC_PARTITIONS=2"):
        await ensure_topics(kafka_bootstrap, [events], client_id="t", fix_command=FIX)


@pytest.mark.integration
async def test_a_group_coordinator_is_found_for_a_new_group(kafka_bootstrap: str, unique: str) -> None:
    await wait_for_coordinator(kafka_bootstrap, f"group-{unique}", client_id="t")


def test_every_deployables_topic_defaults_are_the_contracts_names() -> None:
    """No default topic name is spelled outside contracts/topics.py."""
    from contracts import topics
    from ingest.settings import IngestSettings
    from serving.settings import ServingSettings
    from streams.settings import StreamsSettings
    from training.settings import TrainingSettings

    names = {role.default_name for role in (topics.EVENTS, topics.ENRICHED, topics.DLQ,
                                             topics.ITEMS, topics.ITEM_VECTORS, topics.MODELS,
                                             topics.RECOMMENDATIONS, topics.ROUTING,
                                             topics.RELATIONS, topics.DELETIONS)}
    checked = 0
    for settings in (IngestSettings, ServingSettings, StreamsSettings, TrainingSettings):
        for field, info in settings.model_fields.items():
            if field.startswith("topic_") and isinstance(info.default, str):
                assert info.default in names, f"{settings.__name__}.{field}"
                checked += 1
    assert checked == 3 + 9 + 7 + 6
    streams = StreamsSettings(app_id="app")
    assert streams.users_changelog() == "app-users-changelog"
    assert streams.dedupe_changelog() == "app-dedupe-changelog"
