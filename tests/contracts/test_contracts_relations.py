"""contracts.relations: the edge key codec and the structural rules of a Relation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.relations import (
    MAX_RELATION_BYTES,
    BadKey,
    Edge,
    RelationLimits,
    edge_key,
    key_of,
    parse_key,
    record_of,
    relation_violations,
)
from protos import events_pb2

NOW_MS = 1_790_000_000_000
LIMITS = RelationLimits(max_bytes=200, max_future_skew_ms=60_000, max_id_chars=20)
FIELDS: dict[str, object] = {"follower_id": "alice", "followee_id": "bob",
                             "kind": events_pb2.FOLLOW, "timestamp_ms": NOW_MS}
VALID = events_pb2.Relation(**FIELDS)
ids = st.text(min_size=1, max_size=30)
kinds = st.sampled_from([events_pb2.FOLLOW, events_pb2.FRIEND])


def _relation(**changed: object) -> events_pb2.Relation:
    return events_pb2.Relation(**{**FIELDS, **changed})


def _found(relation: events_pb2.Relation) -> list[tuple[str, str]]:
    """``(field, reason)`` of every rule broken under LIMITS."""
    found = relation_violations(relation, now_ms=NOW_MS, limits=LIMITS)
    return [(violation.field, violation.reason) for violation in found]


def test_keys_are_readable_for_plain_ids_and_escape_the_separator() -> None:
    assert edge_key("alice", "bob", events_pb2.FOLLOW) == "alice|bob|follow"
    assert edge_key("a|b", "50%", events_pb2.FRIEND) == "a%7Cb|50%25|friend"
    assert key_of(VALID) == b"alice|bob|follow"
    with pytest.raises(ValueError, match="not a known RelationKind"):
        edge_key("a", "b", events_pb2.RELATION_KIND_UNSPECIFIED)


@given(ids, ids, kinds)
def test_a_key_gives_back_its_edge(follower: str, followee: str, kind: int) -> None:
    assert parse_key(edge_key(follower, followee, kind).encode()) == Edge(follower, followee, kind)


@given(ids, ids, kinds, ids, ids, kinds)
def test_different_edges_have_different_keys(a: str, b: str, k: int, c: str, d: str, m: int) -> None:
    assert (edge_key(a, b, k) == edge_key(c, d, m)) == ((a, b, k) == (c, d, m))


@pytest.mark.parametrize("key", [b"\xff|b|follow", b"a|b", b"a|b|c|follow", b"a|b|block",
                                 b"|b|follow", b"a%|b|follow", b"a|b|FOLLOW"])
def test_anything_else_is_not_an_edge_key(key: bytes) -> None:
    with pytest.raises(BadKey):
        parse_key(key)


def test_a_valid_relation_breaks_no_rule() -> None:
    assert _found(VALID) == []
    assert _found(_relation(kind=events_pb2.FRIEND, share_name=True, removed=True)) == []


@pytest.mark.parametrize(("change", "expected"), [
    ({"follower_id": ""}, [("follower_id", "missing_field")]),
    ({"followee_id": ""}, [("followee_id", "missing_field")]),
    ({"follower_id": "x" * 21}, [("follower_id", "too_long")]),
    ({"kind": events_pb2.RELATION_KIND_UNSPECIFIED}, [("kind", "unknown_relation_kind")]),
    ({"kind": 7}, [("kind", "unknown_relation_kind")]),
    ({"timestamp_ms": 0}, [("timestamp_ms", "missing_field")]),
    ({"timestamp_ms": 1}, [("timestamp_ms", "bad_timestamp")]),
    ({"timestamp_ms": NOW_MS + 60_001}, [("timestamp_ms", "bad_timestamp")]),
    ({"followee_id": "alice"}, [("followee_id", "self_relation")]),
    ({"follower_id": "", "followee_id": ""}, [("follower_id", "missing_field"),
                                              ("followee_id", "missing_field")]),
])
def test_each_broken_rule_is_named_by_field_and_dead_letter_reason(
    change: dict[str, object], expected: list[tuple[str, str]]
) -> None:
    assert _found(_relation(**change)) == expected


def test_an_oversized_relation_is_named_as_a_whole() -> None:
    big = _relation(follower_id="a" * 20, followee_id="b" * 20)
    limits = RelationLimits(max_bytes=40, max_id_chars=20)
    (violation,) = relation_violations(big, now_ms=NOW_MS, limits=limits)
    assert (violation.field, violation.reason) == ("", "oversized")
    assert violation.description == f"{big.ByteSize()} bytes > limit 40"
    assert RelationLimits().max_bytes == MAX_RELATION_BYTES


def test_a_removal_is_a_tombstone_and_a_relation_its_own_value() -> None:
    assert record_of(VALID) == (b"alice|bob|follow", VALID.SerializeToString())
    assert record_of(_relation(removed=True)) == (b"alice|bob|follow", None)
