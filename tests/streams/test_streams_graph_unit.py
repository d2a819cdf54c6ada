"""Pure logic of the social graph and the fan-out: which records of relations are edges
(and the dead-letter reason of those that are not), what the fan-out writes, when an
account is hot."""

from __future__ import annotations

import json
import time

import pytest

from contracts.relations import RelationLimits, key_of
from contracts.social import DEFAULT_TYPE_WEIGHTS, feed_member, feed_score, type_weights
from protos import events_pb2
from streams.fanout import Fanout, SocialAct, feed_entries
from streams.graph import EdgeChange, hot_bounds, relation_change
from streams.records import Record, Rejected

LIMITS = RelationLimits()
TAU_MS = 7 * 24 * 3600 * 1000.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def relation(follower: str = "ada", followee: str = "bob", kind: int = events_pb2.FOLLOW,
             **fields: object) -> events_pb2.Relation:
    return events_pb2.Relation(
        follower_id=follower, followee_id=followee, kind=kind,  # type: ignore[arg-type]
        timestamp_ms=now_ms(), **fields)  # type: ignore[arg-type]


def record(key: bytes | None, value: bytes | None, offset: int = 7) -> Record:
    return Record("relations", 2, offset, key, value)


def judge(key: bytes | None, value: bytes | None) -> EdgeChange | Rejected:
    return relation_change(record(key, value), now_ms=now_ms(), limits=LIMITS)


def test_a_value_adds_the_edge_of_its_key_with_its_share_name() -> None:
    edge = relation(share_name=True)
    assert judge(key_of(edge), edge.SerializeToString()) == EdgeChange(
        "ada", "bob", events_pb2.FOLLOW, True, True, 2, 7)


def test_a_tombstone_or_a_removed_value_removes_that_kind_of_edge() -> None:
    friend = relation(kind=events_pb2.FRIEND)
    removed = EdgeChange("ada", "bob", events_pb2.FRIEND, False, False, 2, 7)
    assert judge(key_of(friend), None) == removed
    friend.removed = True
    friend.share_name = True
    assert judge(key_of(friend), friend.SerializeToString()) == removed


def test_json_values_are_read_like_binary_ones() -> None:
    edge = relation()
    text = json.dumps({"followerId": "ada", "followeeId": "bob", "kind": "FOLLOW",
                       "timestampMs": str(edge.timestamp_ms)}).encode()
    assert judge(key_of(edge), text) == EdgeChange("ada", "bob", events_pb2.FOLLOW, True,
                                                   False, 2, 7)


@pytest.mark.parametrize(("key", "value", "reason"), [
    (b"ada|bob", relation().SerializeToString(), "bad_key"),
    (b"ada|bob|block", None, "bad_key"),
    (None, None, "bad_key"),
    (b"\xff|bob|follow", None, "bad_key"),
    (b"ada|carl|follow", relation().SerializeToString(), "bad_key"),  # another edge
    (b"ada|bob|follow", b"\xff\x00 not protobuf", "undecodable"),
    (b"ada|bob|follow", b"{not json", "undecodable"),
    (b"ada|ada|follow", relation("ada", "ada").SerializeToString(), "self_relation"),
    (b"ada|bob|follow", relation(share_name=True).SerializeToString() + b"\x00" * 9000,
     "oversized"),
    (b"ada|bob|follow", relation(kind=7).SerializeToString(), "unknown_relation_kind"),
    (b"ada|bob|follow", relation(follower="a" * 2000).SerializeToString(), "too_long"),
    (b"ada|bob|follow", events_pb2.Relation(follower_id="ada", followee_id="bob",
                                            kind=events_pb2.FOLLOW).SerializeToString(),
     "missing_field"),
])
def test_bad_records_are_rejected_with_their_reason(key: bytes | None, value: bytes | None,
                                                    reason: str) -> None:
    outcome = judge(key, value)
    assert isinstance(outcome, Rejected), outcome
    assert outcome.reason == reason
    assert outcome.detail


def test_feed_entries_write_weighted_types_once_per_member_at_the_newest_time() -> None:
    fanout = Fanout(weights=type_weights(DEFAULT_TYPE_WEIGHTS), tau_ms=TAU_MS, cap=10)
    acts = [
        SocialAct("bob", events_pb2.PURCHASE, "i1", 1_000),
        SocialAct("bob", events_pb2.PURCHASE, "i1", 3_000),
        SocialAct("bob", events_pb2.PURCHASE, "i1", 2_000),
        SocialAct("bob", events_pb2.CLICK, "i2", 5_000),  # no social weight
        SocialAct("cy|x", events_pb2.VIEW, "i3", 4_000),
    ]
    assert feed_entries(acts, fanout) == [
        ["bob", feed_member("bob", events_pb2.PURCHASE, "i1"),
         repr(feed_score(3.0, 3_000, TAU_MS))],
        ["cy|x", feed_member("cy|x", events_pb2.VIEW, "i3"), repr(feed_score(0.25, 4_000, TAU_MS))],
    ]
    assert feed_entries(acts, Fanout(weights={}, tau_ms=TAU_MS, cap=10)) == []


def test_an_account_is_hot_above_the_threshold_until_nine_tenths_of_it() -> None:
    assert hot_bounds(10_000) == (10_000, 9_000)
    assert hot_bounds(3) == (3, 2)
    assert hot_bounds(1) == (1, 0)
