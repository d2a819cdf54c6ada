"""The real worker (``python -m streams``) against the real Kafka and Redis.

One worker serves the whole module; every test uses its own item and user ids.
"""

from __future__ import annotations

import time
import urllib.request
import uuid

import numpy as np
import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.consumer.fetcher import ConsumerRecord
from prometheus_client.parser import text_string_to_metric_families
from streams_harness import Running

from contracts.encoder import ItemEncoder
from contracts.itemtext import item_text
from contracts.online import decode_vector
from protos import events_pb2

pytestmark = pytest.mark.integration

HALF_LIFE_MS = 24 * 3600 * 1000.0  # the default decay_half_life_s


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def event(user: str, item: str, kind: int = events_pb2.CLICK, *, ts: int | None = None,
          event_id: str | None = None, value: float = 0.0) -> events_pb2.Event:
    return events_pb2.Event(
        event_id=event_id or new_id("e"), user_id=user, item_id=item,
        type=kind, timestamp_ms=ts or now_ms(), value=value,  # type: ignore[arg-type]
    )


def publish_items(running: Running, items: list[events_pb2.Item]) -> dict[str, np.ndarray]:
    """Publish items and wait for their vectors; returns item id -> vector."""
    for item in items:
        running.send("items", item.item_id, item.SerializeToString())
    wanted = {item.item_id for item in items}

    def vectors(records: list[ConsumerRecord]) -> dict[str, np.ndarray] | None:
        found: dict[str, np.ndarray] = {}
        for record in records:
            message = events_pb2.ItemVector.FromString(record.value)
            if message.item_id in wanted:
                assert record.key == message.item_id.encode()
                assert message.model_version == "base"
                found[message.item_id] = np.asarray(message.vector, dtype=np.float32)
        return found if set(found) == wanted else None

    return running.logs["item_vectors"].wait_for(vectors, running.worker, what="item vectors")


def enriched_for(running: Running, user: str, count: int) -> list[events_pb2.EnrichedEvent]:
    def found(records: list[ConsumerRecord]) -> list[events_pb2.EnrichedEvent] | None:
        mine = [
            events_pb2.EnrichedEvent.FromString(r.value) for r in records if r.key == user.encode()
        ]
        return mine if len(mine) >= count else None

    return running.logs["enriched"].wait_for(found, running.worker, what=f"{count} enriched")


def catalog(n: int) -> list[events_pb2.Item]:
    titles = ["Toy Story (1995)", "Toy Story 2 (1999)", "Heat (1995)", "Casino (1995)"]
    genres = [["Animation", "Comedy"], ["Animation", "Comedy"], ["Action", "Crime"], ["Drama"]]
    return [
        events_pb2.Item(item_id=new_id("item"), title=titles[i % 4], categories=genres[i % 4],
                        updated_at_ms=now_ms())
        for i in range(n)
    ]


def test_topics_are_created_with_the_contract_shapes(
    running: Running, kafka_bootstrap: str
) -> None:
    print(f"worker ready {running.startup_s:.1f} s after launch")
    topics = running.worker.topics
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics(list(topics.values()))}
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in topics.values()]
        )["topic"]
    finally:
        admin.close()
    partitions = {key: len(described[name]["partitions"]) for key, name in topics.items()}
    assert partitions.pop("models") == 1
    assert set(partitions.values()) == {4}
    policy = {
        key: configs[name].get("cleanup.policy", {}).get("value") for key, name in topics.items()
    }
    assert policy["items"] == policy["item_vectors"] == "compact"
    assert policy["enriched"] == policy["dlq"] == policy["models"] == "delete"
    assert int(configs[topics["enriched"]]["retention.ms"]["value"]) == 365 * 24 * 3600 * 1000


def test_items_get_vectors_of_version_base(running: Running, encoder: ItemEncoder) -> None:
    items = catalog(4)
    vectors = publish_items(running, items)
    expected = encoder.encode([item_text(item) for item in items])
    for item, want in zip(items, expected, strict=True):
        got = vectors[item.item_id]
        assert got.shape == (384,)
        assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-4)
        assert float(got @ want) > 0.99  # the same model, text and pooling


def test_events_are_enriched_and_update_redis(running: Running) -> None:
    first, second = catalog(2)
    vectors = publish_items(running, [first, second])
    user = new_id("user")
    start = now_ms() - 3_600_000
    purchase = event(user, first.item_id, events_pb2.PURCHASE, ts=start)
    running.send("events", user, purchase.SerializeToString())
    (enriched,) = enriched_for(running, user, 1)
    assert enriched.event == purchase
    assert enriched.item.item_id == first.item_id and enriched.item.title == first.title
    assert enriched.weight == 5.0
    assert enriched.source_topic == running.worker.topics["events"]

    keys = running.worker.keys
    stored: dict[bytes, bytes]
    stored = running.redis.hgetall(keys.user_vector(user))  # type: ignore[assignment]
    one = decode_vector(stored[b"vec"])
    np.testing.assert_allclose(one, vectors[first.item_id], atol=1e-5)
    assert stored[b"version"] == b"base"
    assert int(stored[b"ts"]) == start
    assert running.redis.zscore(keys.seen(user), first.item_id) == start
    assert running.redis.zscore(keys.popular(), first.item_id) == 5.0

    click = event(user, second.item_id, events_pb2.CLICK, ts=start + 3_600_000)
    running.send("events", user, click.SerializeToString())
    enriched_for(running, user, 2)
    raw = running.redis.hget(keys.user_vector(user), "vec")
    assert isinstance(raw, bytes)
    two = decode_vector(raw)
    # Weighted, decayed mean: the purchase is one hour older than the newest event.
    decay = 0.5 ** (3_600_000 / HALF_LIFE_MS)
    want = 5.0 * decay * vectors[first.item_id] + 2.0 * vectors[second.item_id]
    np.testing.assert_allclose(two, want / np.linalg.norm(want), atol=1e-5)
    assert not np.allclose(one, two)
    assert set(running.redis.zrange(keys.seen(user), 0, -1)) == {
        first.item_id.encode(), second.item_id.encode(),
    }
    # Acts by event type, for exclusion; trending by decayed count (1 h time constant).
    assert running.redis.zrange(keys.acts(events_pb2.PURCHASE, user), 0, -1, withscores=True) == [
        (first.item_id.encode(), float(start))
    ]
    assert running.redis.zrange(keys.acts(events_pb2.CLICK, user), 0, -1) == [second.item_id.encode()]
    trending = dict(running.redis.zrange(keys.trending("1h"), 0, -1, withscores=True))
    base = float(running.redis.get(keys.trending_base("1h")))  # type: ignore[arg-type]
    now = start + 3_600_000

    def count(item: events_pb2.Item) -> float:
        return trending[item.item_id.encode()] * float(np.exp((base - now) / 3_600_000))

    assert count(first) == pytest.approx(5.0 / np.e) and count(second) == pytest.approx(2.0)


def test_malformed_input_is_dead_lettered_and_the_worker_goes_on(running: Running) -> None:
    (item,) = catalog(1)
    publish_items(running, [item])
    user = new_id("user")
    valid = event(user, item.item_id)
    bad: dict[str, tuple[str | None, bytes]] = {
        "undecodable": (user, b"\xff\xfe definitely not protobuf"),
        "unknown_event_type": (user, event(user, item.item_id, 42).SerializeToString()),
        "unknown_item": (user, event(user, "no-such-item").SerializeToString()),
        "bad_timestamp": (user, event(user, item.item_id, ts=631_152_000_000).SerializeToString()),
        "missing_field": (user, event(user, "").SerializeToString()),
        "key_mismatch": ("someone-else", event(user, item.item_id).SerializeToString()),
        "oversized": (user, event(user, item.item_id).SerializeToString() + b"\x42\x00" * 40_000),
    }
    bad_items = {
        "undecodable": running.send("items", "broken", b"\xff\xfe not an item"),
        "missing_field": running.send(
            "items", "no-id", events_pb2.Item(title="x").SerializeToString()
        ),
    }
    running.send("events", user, valid.SerializeToString())
    origins = {reason: running.send("events", key, value) for reason, (key, value) in bad.items()}
    origins["duplicate"] = running.send("events", user, valid.SerializeToString())
    after = event(user, item.item_id, events_pb2.VIEW)
    running.send("events", user, after.SerializeToString())

    enriched = enriched_for(running, user, 2)
    assert [e.event.event_id for e in enriched] == [valid.event_id, after.event_id]

    by_origin = {origin: reason for reason, origin in origins.items()}

    def letters(records: list[ConsumerRecord]) -> dict[str, events_pb2.DeadLetter] | None:
        found = {}
        for record in records:
            letter = events_pb2.DeadLetter.FromString(record.value)
            origin = (letter.origin_partition, letter.origin_offset)
            if letter.origin_topic == running.worker.topics["events"] and origin in by_origin:
                found[by_origin[origin]] = letter
        return found if len(found) == len(origins) else None

    found = running.logs["dlq"].wait_for(letters, running.worker, what="dead letters")
    for reason, letter in found.items():
        assert letter.reason == reason, letter.detail
        key, value = bad.get(reason, (user, valid.SerializeToString()))
        assert letter.payload == value
        assert letter.key == (key or "").encode()
        assert letter.failed_at_ms > 0 and letter.detail

    items_topic = running.worker.topics["items"]

    def item_letters(records: list[ConsumerRecord]) -> dict[str, str] | None:
        letters = [events_pb2.DeadLetter.FromString(r.value) for r in records]
        reasons = {
            reason: letter.reason
            for letter in letters
            for reason, origin in bad_items.items()
            if letter.origin_topic == items_topic
            and (letter.origin_partition, letter.origin_offset) == origin
        }
        return reasons if len(reasons) == len(bad_items) else None

    reasons = running.logs["dlq"].wait_for(item_letters, running.worker, what="item dead letters")
    assert reasons == {reason: reason for reason in bad_items}


def test_every_event_ends_in_exactly_one_output(running: Running) -> None:
    items = catalog(3)
    publish_items(running, items)
    users = [new_id("user") for _ in range(20)]
    produced: set[tuple[int, int]] = set()
    started = time.monotonic()
    for n in range(300):
        user = users[n % len(users)]
        if n % 10 == 3:
            value = b"\x00garbage"
        elif n % 10 == 7:
            value = event(user, "unknown").SerializeToString()
        else:
            value = event(user, items[n % 3].item_id, events_pb2.VIEW + n % 5).SerializeToString()
        produced.add(running.send("events", user, value))
    events_topic = running.worker.topics["events"]

    def outcomes(_: list[ConsumerRecord]) -> tuple[list, list] | None:
        enriched = [
            (m.source_partition, m.source_offset)
            for m in map(events_pb2.EnrichedEvent.FromString,
                         (r.value for r in running.logs["enriched"].records))
            if m.source_topic == events_topic and (m.source_partition, m.source_offset) in produced
        ]
        dead = [
            (m.origin_partition, m.origin_offset)
            for m in map(events_pb2.DeadLetter.FromString,
                         (r.value for r in running.logs["dlq"].records))
            if m.origin_topic == events_topic and (m.origin_partition, m.origin_offset) in produced
        ]
        return (enriched, dead) if len(enriched) + len(dead) >= len(produced) else None

    def poll_both(records: list[ConsumerRecord]) -> tuple[list, list] | None:
        running.logs["dlq"].poll()
        return outcomes(records)

    enriched, dead = running.logs["enriched"].wait_for(poll_both, running.worker, what="outcomes")
    elapsed = time.monotonic() - started
    print(f"{len(produced)} events produced and processed in {elapsed:.2f} s")
    assert len(enriched) == 240 and len(dead) == 60
    assert set(enriched) | set(dead) == produced
    assert len(set(enriched) | set(dead)) == len(enriched) + len(dead)  # none in both, none twice


def scrape(url: str) -> dict[str, float]:
    """Samples of the worker's /metrics by name and labels, e.g. ``a_total{reason="x"}``."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_metrics_endpoint_counts_what_the_worker_did(running: Running) -> None:
    url = running.worker.metrics_url()
    before = scrape(url)
    (item,) = catalog(1)
    publish_items(running, [item])
    user = new_id("user")
    for kind in (events_pb2.VIEW, events_pb2.CLICK):
        running.send("events", user, event(user, item.item_id, kind).SerializeToString())
    running.send("events", user, event(user, "no-such-item").SerializeToString())
    enriched_for(running, user, 2)
    running.logs["dlq"].wait_for(
        lambda records: [r for r in records if r.key == user.encode()] or None, running.worker,
        what="dead letter",
    )
    deadline = time.monotonic() + 30
    while True:
        after = scrape(url)
        if after.get('streams_events_dead_lettered_total{reason="unknown_item"}', 0) > before.get(
            'streams_events_dead_lettered_total{reason="unknown_item"}', 0
        ) or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert grew("streams_events_in_total") >= 3
    assert grew("streams_events_enriched_total") >= 2
    assert grew('streams_events_dead_lettered_total{reason="unknown_item"}') >= 1
    assert grew("streams_user_vectors_total") >= 1
    assert grew("streams_items_embedded_total") >= 1
    assert grew("streams_batch_size_count") >= 1
    assert grew('streams_encode_seconds_count{encoder="user"}') >= 1
    assert grew("streams_freshness_seconds_count") >= 2
    assert after['streams_model_info{version="base"}'] == 1
    lags = [value for name, value in after.items() if name.startswith("streams_consumer_lag")]
    assert lags and all(lag >= 0 for lag in lags)
