"""How the social graph's writes split by slot on a Redis Cluster (streams.clustergraph),
without a Redis: which side of an edge goes where, and which feed gets which acts."""

from __future__ import annotations

from contracts.online import RedisKeys, slot_of
from contracts.social import feed_member, feed_score
from protos import events_pb2
from streams.clustergraph import Audience, Backfill, audience_feeds, edge_calls, feed_calls, \
    feed_writes
from streams.fanout import Fanout, SocialAct
from streams.graph import EdgeChange
from streams.records import Record
from streams.relations import BatchClock

KEYS = RedisKeys("sr:")
FANOUT = Fanout(weights={events_pb2.PURCHASE: 1.0}, tau_ms=1000.0, cap=5, backfill=2)


def test_each_side_of_an_edge_is_a_call_in_its_own_users_slot_in_record_order() -> None:
    follow = EdgeChange("ada", "bob", events_pb2.FOLLOW, True, False, 0, 7)
    leave = EdgeChange("ada", "bob", events_pb2.FOLLOW, False, False, 0, 8)
    backfill = Backfill(frozenset(), {"bob": ["1.5", "bob|3|i1"]})
    calls = edge_calls(KEYS, [follow, leave], backfill, FANOUT)
    ada, bob = slot_of(KEYS.following("ada")), slot_of(KEYS.followers("bob"))
    assert [(c.offset, call.name) for c, call in calls[ada]] == [
        (7, "follower_side"), (8, "follower_side")]
    assert [(c.offset, call.name) for c, call in calls[bob]] == [
        (7, "followee_side"), (8, "followee_side")]
    first, second = (call for _, call in calls[ada])
    assert first.keys == [KEYS.following("ada"), KEYS.social("ada")]
    assert first.args[-2:] == ["1.5", "bob|3|i1"]  # the follow copies bob's acts
    assert len(second.args) == 9  # the removal copies none
    assert all(slot_of(k) == ada for k in first.keys)


def test_a_feed_gets_the_acts_of_the_actors_its_owner_follows_in_its_slot_only() -> None:
    acts = [SocialAct("bob", events_pb2.PURCHASE, "i1", 1000),
            SocialAct("cy", events_pb2.PURCHASE, "i2", 2000),
            SocialAct("bob", events_pb2.VIEW, "i3", 3000),  # no weight: not fanned out
            SocialAct("eve", events_pb2.PURCHASE, "i4", 4000)]  # deleted: skipped
    audience = Audience({"bob": ["ada", "dan"], "cy": ["ada"], "eve": ["ada"]}, frozenset())
    feeds = audience_feeds(KEYS, acts, audience, FANOUT.weights, skip={"eve"})
    slot = slot_of(KEYS.social("ada"))
    assert feeds[slot]["ada"] == [0, 1]
    assert feeds[slot_of(KEYS.social("dan"))]["dan"] == [0]
    calls, writes = feed_calls(KEYS, {"ada": [acts[i] for i in feeds[slot]["ada"]]}, FANOUT)
    (call,) = calls
    assert call.keys == [KEYS.social("ada")] and call.args[:2] == ["5", "0"]
    pairs = dict(zip(call.args[3::2], (float(a) for a in call.args[2::2]), strict=True))
    assert pairs == {feed_member("bob", events_pb2.PURCHASE, "i1"): feed_score(1.0, 1000, 1000.0),
                     feed_member("cy", events_pb2.PURCHASE, "i2"): feed_score(1.0, 2000, 1000.0)}
    assert writes == feed_writes(calls) == 2


def test_a_record_read_back_is_decided_with_the_clock_of_its_batch() -> None:
    clock = BatchClock(kept=2)
    clock.note([Record("rel", 0, 5, None, None), Record("rel", 0, 9, None, None),
                Record("rel", 1, 3, None, None)], 1_000)
    clock.note([Record("rel", 0, 12, None, None)], 2_000)
    assert (clock.at(0, 5), clock.at(0, 9), clock.at(0, 10), clock.at(1, 3)) == (
        1_000, 1_000, 2_000, 1_000)
    assert clock.at(0, 13) is None and clock.at(2, 0) is None  # never seen
    clock.note([Record("rel", 0, 20, None, None)], 3_000)  # the oldest batch forgotten
    assert clock.at(0, 9) is None and clock.at(0, 15) == 3_000
