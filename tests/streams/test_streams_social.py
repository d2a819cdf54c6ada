"""The worker's side of the social graph, against the real Kafka and Redis: relations
records become edges (and tombstones remove them), bad ones become dead letters with
their reason, accepted events land in followers' feeds, hot accounts are read on demand."""

from __future__ import annotations

import time
import urllib.request
import uuid
import pytest
from kafka.consumer.fetcher import ConsumerRecord
from streams_harness import Running, eventually, publish_items

from contracts.relations import key_of
from contracts.social import DEFAULT_TYPE_WEIGHTS, EdgeFlags, feed_member, feed_score
from protos import events_pb2

pytestmark = pytest.mark.integration

THRESHOLD = 3  # hot with 4 followers, no longer hot with 2
CAP = 3
TAU_S = 3600.0
WORKER_ENV = {
    "STREAMREC_STREAMS_FANOUT_THRESHOLD": str(THRESHOLD),
    "STREAMREC_STREAMS_SOCIAL_FEED_CAP": str(CAP),
    "STREAMREC_STREAMS_SOCIAL_TAU_S": str(TAU_S),
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def tag() -> str:
    return uuid.uuid4().hex[:8]


def relation(follower: str, followee: str, kind: int = events_pb2.FOLLOW,
             share_name: bool = False) -> events_pb2.Relation:
    return events_pb2.Relation(
        follower_id=follower, followee_id=followee, kind=kind,  # type: ignore[arg-type]
        timestamp_ms=now_ms(), share_name=share_name)


def follow(running: Running, *relations: events_pb2.Relation) -> None:
    running.send_all("relations", [(key_of(r), r.SerializeToString()) for r in relations])


def unfollow(running: Running, *relations: events_pb2.Relation) -> None:
    for r in relations:
        running.send("relations", key_of(r), None)  # type: ignore[arg-type]


def flags(running: Running, follower: str, followee: str) -> tuple[int, int]:
    keys, client = running.worker.keys, running.redis
    following = client.hget(keys.following(follower), followee)
    followers = client.hget(keys.followers(followee), follower)
    return int(following or 0), int(followers or 0)  # type: ignore[arg-type]


def wait_flags(running: Running, follower: str, followee: str, want: EdgeFlags) -> None:
    def probe() -> bool | None:
        return True if flags(running, follower, followee) == (want.encode(),) * 2 else None

    eventually(probe, running.worker, f"flags {want} on {follower} -> {followee}")


def is_hot(running: Running, user: str) -> bool:
    return bool(running.redis.sismember(running.worker.keys.hot(), user))


def feed(running: Running, user: str) -> dict[str, float]:
    pairs: list[tuple[bytes, float]]
    pairs = running.redis.zrange(running.worker.keys.social(user), 0, -1,  # type: ignore[assignment]
                                 withscores=True)
    return {member.decode(): score for member, score in pairs}


def event(user: str, item: str, kind: int, ts: int) -> bytes:
    return events_pb2.Event(
        event_id=f"ev-{tag()}", user_id=user, item_id=item, type=kind,  # type: ignore[arg-type]
        timestamp_ms=ts).SerializeToString()


def test_edges_appear_keep_each_other_and_go_with_their_tombstones(running: Running) -> None:
    ada, bob = f"ada-{tag()}", f"bob-{tag()}"
    follow(running, relation(ada, bob, share_name=True),
           relation(ada, bob, events_pb2.FRIEND))
    wait_flags(running, ada, bob, EdgeFlags(kinds=0b11, named=0b01))
    unfollow(running, relation(ada, bob))
    wait_flags(running, ada, bob, EdgeFlags(kinds=0b10))
    follow(running, relation(ada, bob, events_pb2.FRIEND, share_name=True))
    wait_flags(running, ada, bob, EdgeFlags(kinds=0b10, named=0b10))
    unfollow(running, relation(ada, bob, events_pb2.FRIEND))
    wait_flags(running, ada, bob, EdgeFlags())
    keys = running.worker.keys
    assert not running.redis.exists(keys.following(ada), keys.followers(bob))


def test_every_bad_relation_record_is_dead_lettered_with_its_reason(running: Running) -> None:
    t = tag()
    good = relation(f"ok-{t}", f"other-{t}")
    oversized = relation(f"big-{t}", f"other-{t}")
    bad = {
        "self_relation": (f"me-{t}|me-{t}|follow".encode(),
                          relation(f"me-{t}", f"me-{t}").SerializeToString()),
        "bad_key": (f"bk-{t}|x".encode(), relation(f"bk-{t}", "x").SerializeToString()),
        "undecodable": (f"un-{t}|x|follow".encode(), b"\xff\x00 not protobuf"),
        "oversized": (key_of(oversized), oversized.SerializeToString() + b"\x00" * 9000),
        "unknown_relation_kind": (f"uk-{t}|x|follow".encode(),
                                  relation(f"uk-{t}", "x", kind=9).SerializeToString()),
    }
    sent = running.send_all("relations", [*bad.values(),
                                          (key_of(good), good.SerializeToString())])
    where = dict(zip(bad, sent, strict=False))

    def letters(records: list[ConsumerRecord]) -> dict[str, events_pb2.DeadLetter] | None:
        mine = {}
        for r in records:
            letter = events_pb2.DeadLetter.FromString(r.value)
            if letter.origin_topic == running.worker.topics["relations"] and \
                    (letter.origin_partition, letter.origin_offset) in sent:
                mine[letter.reason] = letter
        return mine if len(mine) >= len(bad) else None

    found = running.logs["dlq"].wait_for(letters, running.worker, what="relation dead letters")
    assert set(found) == set(bad)
    for reason, (key, value) in bad.items():
        letter = found[reason]
        assert (letter.key, letter.payload) == (key, value)
        assert (letter.origin_partition, letter.origin_offset) == where[reason]
        assert letter.detail
    wait_flags(running, good.follower_id, good.followee_id, EdgeFlags(kinds=0b01))
    assert not running.redis.exists(running.worker.keys.following(f"me-{t}"))

    def dead_lettered() -> bool | None:
        with urllib.request.urlopen(running.worker.metrics_url(), timeout=5) as response:
            text = response.read().decode()
        wanted = [f'streams_relations_dead_lettered_total{{reason="{r}"}}' for r in bad]
        return True if all(w in text for w in wanted) and \
            "streams_relations_applied_total" in text else None

    eventually(dead_lettered, running.worker, "relation metrics")


def test_acts_fan_out_to_followers_capped_and_hot_accounts_fan_in(running: Running) -> None:
    t = tag()
    items = publish_items(running, f"social-{t}", 5)
    bob, star = f"bob-{t}", f"star-{t}"
    fans = [f"fan{k}-{t}" for k in range(THRESHOLD + 1)]
    follow(running, relation(fans[0], bob), relation(fans[1], bob),
           *(relation(fan, star) for fan in fans))
    eventually(lambda: True if is_hot(running, star) else None, running.worker, f"{star} hot")
    wait_flags(running, fans[1], bob, EdgeFlags(kinds=0b01))

    base = now_ms()
    for k, item in enumerate(items):  # five purchases, one view of the first item later
        running.send("events", bob, event(bob, item, events_pb2.PURCHASE, base + k))
    running.send("events", bob, event(bob, items[0], events_pb2.VIEW, base + 10))
    running.send("events", star, event(star, items[0], events_pb2.PURCHASE, base))
    running.send("events", star, event(star, items[1], events_pb2.PURCHASE, base))
    tau_ms = TAU_S * 1000

    def capped() -> dict[str, float] | None:
        found = feed(running, fans[0])
        newest = {feed_member(bob, events_pb2.PURCHASE, i) for i in items[-CAP:]}
        return found if set(found) == newest else None

    found = eventually(capped, running.worker, "the newest purchases in the fan's feed")
    assert found[feed_member(bob, events_pb2.PURCHASE, items[-1])] == pytest.approx(
        feed_score(DEFAULT_TYPE_WEIGHTS["purchase"], base + 4, tau_ms))
    assert feed(running, fans[1]) == found
    # The hot account's purchases went to no feed: its followers' requests read them. Its
    # events may sit on another partition than bob's, so wait for its acts before looking.
    keys = running.worker.keys
    eventually(lambda: running.redis.zscore(keys.acts(events_pb2.PURCHASE, star), items[1]),
               running.worker, f"{star}'s purchase in its acts")
    assert running.redis.zscore(keys.acts(events_pb2.PURCHASE, star), items[1]) == base
    assert not running.redis.exists(keys.social(fans[2]), keys.social(fans[3]))

    # Down to 2 followers (nine tenths of 3, rounded down): no longer hot; its acts fan out.
    unfollow(running, relation(fans[0], star))
    time.sleep(0.5)
    assert is_hot(running, star)  # 3 followers: not above the threshold, still hot
    unfollow(running, relation(fans[1], star))
    eventually(lambda: True if not is_hot(running, star) else None, running.worker,
               f"{star} not hot")
    running.send("events", star, event(star, items[2], events_pb2.PURCHASE, base + 20))
    member = feed_member(star, events_pb2.PURCHASE, items[2])
    eventually(lambda: True if member in feed(running, fans[3]) else None, running.worker,
               "the no longer hot account's act in a follower's feed")
    assert member not in feed(running, fans[0])
