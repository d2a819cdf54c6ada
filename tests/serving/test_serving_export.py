"""``python -m serving.cli.admin export-user``: what was written about a user, in Redis
and in the topics, comes back in the document, and nothing of anyone else; against the
real Kafka and Redis, the command run as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from kafka import KafkaProducer

from contracts.online import RedisKeys, encode_vector
from contracts.relations import record_of
from contracts.social import EdgeFlags, feed_member, feed_score
from protos import events_pb2
from serving.export import edges_entry, partition_of, vector_entry

ROOT = Path(__file__).resolve().parents[2]
USER = "ann|%1"  # a separator and a '%' in the id: escaped in edge keys and feed members
OTHER = "bob"
T0 = 1_790_000_000_000
STATE = {"h": ["i0", 4, T0, 5.0], "a": [f"{USER}-0", 0]}  # the worker's own format


def event(user: str, item: str, n: int, kind: int = events_pb2.PURCHASE) -> events_pb2.Event:
    return events_pb2.Event(event_id=f"{user}-{n}", user_id=user, item_id=item, type=kind,
                            timestamp_ms=T0 + n)


def test_partition_of_is_the_producers_choice(create_topics: Any, kafka_bootstrap: str,
                                              unique: str) -> None:
    (topic,) = create_topics([f"keyed-{unique}"], partitions=5)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        for n in range(30):
            user = f"user-{n}"
            sent = producer.send(topic, key=user.encode(), value=b"x").get(30)
            assert sent.partition == partition_of(user, 5), user
    finally:
        producer.close()


def test_vector_values_read_back_as_the_same_float32() -> None:
    vector = np.array([0.1, -1 / 3, 2.5e-8], dtype=np.float32)
    entry = vector_entry("k", {b"vec": encode_vector(vector), b"version": b"v1", b"ts": b"5",
                               b"extra": b"x"}, -1)
    assert np.array_equal(np.array(entry["values"], dtype=np.float32), vector)
    assert entry["dim"] == 3 and entry["version"] == "v1" and entry["newest_event_ms"] == 5
    assert entry["ttl_s"] is None and entry["other_fields"] == {"extra": "x"}
    assert "vector_base64" in vector_entry("k", {b"vec": b"abc"}, 10)


def test_edge_flags_name_kinds_and_names() -> None:
    flags = EdgeFlags().with_edge(events_pb2.FOLLOW, share_name=True).with_edge(
        events_pb2.FRIEND, share_name=False)
    entry = edges_entry("k", {b"x": str(flags.encode()).encode()})
    assert entry["users"] == [{"user_id": "x", "kinds": ["follow", "friend"],
                               "share_name": ["follow"]}]


@pytest.fixture
def stores(create_topics: Any, kafka_bootstrap: str, redis_url: str, unique: str
           ) -> Iterator[dict[str, str]]:
    """Fresh topics and prefix, and the serving environment that names them."""
    names = {role: f"{role}-{unique}" for role in
             ("events", "enriched", "dlq", "recommendations", "relations")}
    create_topics([names[r] for r in ("events", "enriched", "dlq", "recommendations")],
                  partitions=3)
    create_topics([names["relations"], f"app-{unique}-users-changelog"], partitions=3,
                  config={"cleanup.policy": "compact"})
    prefix = f"srtest:{unique}:"
    env = dict(os.environ, PYTHONPATH=str(ROOT),
               STREAMREC_SERVING_KAFKA_BOOTSTRAP=kafka_bootstrap,
               STREAMREC_SERVING_REDIS_URL=redis_url, STREAMREC_SERVING_REDIS_PREFIX=prefix,
               STREAMREC_SERVING_TOPIC_EVENTS=names["events"],
               STREAMREC_SERVING_TOPIC_ENRICHED=names["enriched"],
               STREAMREC_SERVING_TOPIC_DLQ=names["dlq"],
               STREAMREC_SERVING_TOPIC_RECOMMENDATIONS=names["recommendations"],
               STREAMREC_SERVING_TOPIC_RELATIONS=names["relations"],
               STREAMREC_SERVING_STREAMS_APP_ID=f"app-{unique}")
    yield env
    client = redis.Redis.from_url(redis_url)
    found = client.keys(f"{prefix}*")
    if found:
        client.delete(*found)
    client.close()


def export(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serving.cli.admin", "export-user", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def write_topics(env: dict[str, str], kafka_bootstrap: str) -> None:
    """The user's and another user's records on every topic the export reads, keyed as
    their writers key them; and one record of the user in an aborted transaction."""
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    topic = {name: env[f"STREAMREC_SERVING_TOPIC_{name}"] for name in
             ("EVENTS", "ENRICHED", "DLQ", "RECOMMENDATIONS", "RELATIONS")}
    for user in (USER, OTHER):
        key = user.encode()
        for n in range(3):
            producer.send(topic["EVENTS"], key=key, value=event(user, f"i{n}", n).SerializeToString())
            enriched = events_pb2.EnrichedEvent(event=event(user, f"i{n}", n), weight=5.0)
            producer.send(topic["ENRICHED"], key=key, value=enriched.SerializeToString())
        producer.send(topic["EVENTS"], key=key, value=b"{not json")  # dead-lettered by streams
        producer.send(topic["EVENTS"], key=key, value=None)
        letter = events_pb2.DeadLetter(payload=b"{not json", key=key, reason="undecodable",
                                       origin_topic=topic["EVENTS"])
        producer.send(topic["DLQ"], key=key, value=letter.SerializeToString())
        served = events_pb2.RecommendationLog(recommendation_id=f"r-{user}", user_id=user,
                                              item_ids=["i7", "i8"], model_version="base")
        producer.send(topic["RECOMMENDATIONS"], key=key, value=served.SerializeToString())
    for follower, followee, removed in ((USER, OTHER, False), (OTHER, USER, False),
                                        ("carl", "dora", False), ("carl", USER, True)):
        relation = events_pb2.Relation(follower_id=follower, followee_id=followee,
                                       kind=events_pb2.FOLLOW, timestamp_ms=T0, removed=removed)
        key, value = record_of(relation)
        producer.send(topic["RELATIONS"], key=key, value=value)
    changelog = f"{env['STREAMREC_SERVING_STREAMS_APP_ID']}-users-changelog"
    for user in (USER, OTHER):  # in the partition of the user's events, as streams writes it
        producer.send(changelog, key=user.encode(), partition=partition_of(user, 3),
                      value=json.dumps(STATE).encode())
    producer.flush(30)
    producer.close()
    aborted = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"t-{time.time_ns()}")
    aborted.init_transactions()
    aborted.begin_transaction()
    aborted.send(topic["ENRICHED"], key=USER.encode(), value=events_pb2.EnrichedEvent(
        event=event(USER, "aborted", 9)).SerializeToString())
    aborted.flush(30)
    aborted.abort_transaction()
    aborted.close()


def write_redis(redis_url: str, prefix: str) -> None:
    """The user's online state as streams writes it, and another user's."""
    keys = RedisKeys(prefix)
    client = redis.Redis.from_url(redis_url)
    for user in (USER, OTHER):
        client.hset(keys.user_vector(user), mapping={
            "vec": encode_vector(np.array([0.6, 0.8])), "version": "base", "ts": T0, "at": T0 + 1})
        client.zadd(keys.seen(user), {"i1": T0 + 1, "i2": T0 + 2})
        client.zadd(keys.acts(events_pb2.PURCHASE, user), {"i2": T0 + 2})
    client.expire(keys.seen(USER), 3600)
    client.zadd(keys.social(USER), {feed_member(OTHER, events_pb2.PURCHASE, "i5"):
                                    feed_score(3.0, T0, 604_800_000.0)})
    follow = str(EdgeFlags().with_edge(events_pb2.FOLLOW, share_name=True).encode())
    client.hset(keys.following(USER), OTHER, follow)
    client.hset(keys.followers(USER), OTHER, follow)
    client.sadd(keys.hot(), USER)
    client.close()


def test_export_returns_what_was_written_and_nothing_else(
        stores: dict[str, str], kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    write_topics(stores, kafka_bootstrap)
    write_redis(redis_url, stores["STREAMREC_SERVING_REDIS_PREFIX"])
    out = tmp_path / "export.json"
    done = export(stores, USER, "--out", str(out), "--relations")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    doc = json.loads(out.read_text())
    assert doc["user_id"] == USER and doc["held"] is True and doc["format"] == 1

    online = doc["online"]
    assert online["vector"]["values"] == [0.6, 0.8] and online["vector"]["version"] == "base"
    assert online["vector"]["newest_event_ms"] == T0 and online["vector"]["ttl_s"] is None
    assert [i["item_id"] for i in online["seen"]["items"]] == ["i2", "i1"]
    assert 0 < online["seen"]["ttl_s"] <= 3600
    assert list(online["acts"]) == ["purchase"]
    assert online["acts"]["purchase"]["items"] == [{"item_id": "i2", "timestamp_ms": T0 + 2}]
    (entry,) = online["social_feed"]["entries"]
    assert (entry["actor_id"], entry["event_type"], entry["item_id"]) == (OTHER, "purchase", "i5")
    assert online["following"]["users"] == [{"user_id": OTHER, "kinds": ["follow"],
                                             "share_name": ["follow"]}]
    assert online["followers"]["users"][0]["user_id"] == OTHER
    assert online["hot_account"] is True

    events = [e["event"] for e in doc["events"] if "event" in e]
    assert [e["event_id"] for e in events] == [f"{USER}-{n}" for n in range(3)]
    assert [e for e in doc["events"] if "undecodable" in e][0]["value_base64"]
    assert len([e for e in doc["events"] if e.get("tombstone")]) == 1
    assert len(doc["events"]) == 5
    assert [e["event"]["item_id"] for e in doc["events_enriched"]] == ["i0", "i1", "i2"]
    assert [d["reason"] for d in doc["dead_letters"]] == ["undecodable"]
    assert [r["recommendation_id"] for r in doc["recommendations"]] == [f"r-{USER}"]
    (state,) = doc["worker_state"]
    assert state["state"] == STATE and state["partition"] == partition_of(USER, 3)
    relations = {(r["follower_id"], r["followee_id"], r.get("removed", False))
                 for r in doc["relations"]}
    assert relations == {(USER, OTHER, False), (OTHER, USER, False), ("carl", USER, True)}

    sources = doc["sources"]["topics"]
    assert [p["partition"] for p in sources["events"]["partitions"]] == [partition_of(USER, 3)]
    assert len(sources["relations"]["partitions"]) == 3
    assert OTHER not in json.dumps([doc["events"], doc["events_enriched"], doc["dead_letters"],
                                    doc["recommendations"]])


def test_without_relations_they_are_null_and_stdout_is_the_document(
        stores: dict[str, str], kafka_bootstrap: str, redis_url: str) -> None:
    write_redis(redis_url, stores["STREAMREC_SERVING_REDIS_PREFIX"])
    done = export(stores, USER, "--no-progress")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["relations"] is None and "relations" not in doc["sources"]["topics"]
    assert doc["events"] == [] and doc["held"] is True


def test_a_user_of_whom_nothing_is_held_gets_an_empty_document(stores: dict[str, str]) -> None:
    done = export(stores, "nobody")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["held"] is False and doc["online"] == {}
    assert doc["events"] == doc["events_enriched"] == doc["recommendations"] == []
    assert doc["worker_state"] == []
    assert all(s["exists"] for s in doc["sources"]["topics"].values())
    assert "nothing is held about user 'nobody'" in done.stderr


def test_a_missing_topic_is_reported_not_created(stores: dict[str, str], unique: str) -> None:
    env = dict(stores, STREAMREC_SERVING_TOPIC_DLQ=f"absent-{unique}")
    done = export(env, USER)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sources"]["topics"]["dead_letters"] == {
        "topic": f"absent-{unique}", "exists": False}
    assert f"absent-{unique} do not exist" in done.stderr


def test_an_unreachable_store_exits_1_without_a_document(stores: dict[str, str]) -> None:
    env = dict(stores, STREAMREC_SERVING_REDIS_URL="redis://127.0.0.1:1/0")
    done = export(env, USER)
    assert done.returncode == 1
    assert done.stdout == "" and "failed, nothing written" in done.stderr
