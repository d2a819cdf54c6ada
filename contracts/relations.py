"""The social graph's edges on Kafka ``relations``: the key of an edge and what a
structurally acceptable ``Relation`` is (docs/contracts.md §2).

One implementation shared by serving (``TrackRelations``), ingest (``ingest relations``)
and the readers of the topic. The key is ``{follower_id}|{followee_id}|{kind}``, kind the
lower-case ``RelationKind`` name; ``%`` and ``|`` inside an id are written ``%25`` and
``%7C``, so any two ids give one key and a key gives back its ids. A :class:`Violation`'s
``reason`` is its dead-letter reason (``DeadLetter.reason``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from contracts.events import (
    MAX_FUTURE_SKEW_MS,
    MISSING_FIELD,
    OVERSIZED,
    Violation,
    timestamp_violation,
)
from protos import events_pb2

SEPARATOR = "|"
MAX_ID_CHARS = 1024  # default length limit of a follower or followee id
MAX_RELATION_BYTES = 8 * 1024  # default size limit of one serialized Relation
KIND_NAMES: dict[int, str] = {
    value: name.lower()
    for name, value in events_pb2.RelationKind.items()
    if value != events_pb2.RELATION_KIND_UNSPECIFIED
}
KINDS: dict[str, events_pb2.RelationKind] = {
    name: cast("events_pb2.RelationKind", value) for value, name in KIND_NAMES.items()
}

SELF_RELATION = "self_relation"
UNKNOWN_RELATION_KIND = "unknown_relation_kind"
TOO_LONG = "too_long"
BAD_KEY = "bad_key"

_ESCAPES = (("%", "%25"), (SEPARATOR, "%7C"))


class BadKey(ValueError):
    """A record key that is not an edge key."""


@dataclass(frozen=True)
class RelationLimits:
    """What an acceptable relation looks like beyond its schema."""

    max_bytes: int = MAX_RELATION_BYTES
    max_future_skew_ms: int = MAX_FUTURE_SKEW_MS
    max_id_chars: int = MAX_ID_CHARS


@dataclass(frozen=True)
class Edge:
    """Who relates to whom, how: what a key names."""

    follower_id: str
    followee_id: str
    kind: int


def escape_id(text: str) -> str:
    for raw, escaped in _ESCAPES:
        text = text.replace(raw, escaped)
    return text


def unescape_id(text: str) -> str:
    for raw, escaped in reversed(_ESCAPES):
        text = text.replace(escaped, raw)
    return text


def edge_key(follower_id: str, followee_id: str, kind: int) -> str:
    """The topic key of an edge; ValueError for a kind without a name."""
    if kind not in KIND_NAMES:
        raise ValueError(f"kind {kind} is not a known RelationKind")
    return SEPARATOR.join((escape_id(follower_id), escape_id(followee_id), KIND_NAMES[kind]))


def key_of(relation: events_pb2.Relation) -> bytes:
    """The UTF-8 key `relation` is written under."""
    return edge_key(relation.follower_id, relation.followee_id, relation.kind).encode("utf-8")


def parse_key(key: bytes | str) -> Edge:
    """The edge a key names; :class:`BadKey` (reason :data:`BAD_KEY`) for anything else."""
    try:
        text = key.decode("utf-8") if isinstance(key, bytes) else key
    except UnicodeDecodeError as error:
        raise BadKey("the key is not UTF-8") from error
    parts = text.split(SEPARATOR)
    if len(parts) != 3:
        raise BadKey(f"the key has {len(parts)} '|'-separated parts, not 3")
    follower, followee, kind = parts
    if kind not in KINDS:
        raise BadKey(f"the key's kind {kind!r} is not one of {', '.join(KINDS)}")
    if not follower or not followee:
        raise BadKey("the key has an empty id")
    if escape_id(unescape_id(follower)) != follower or escape_id(unescape_id(followee)) != followee:
        raise BadKey("the key has a bare '%' not written as %25")
    return Edge(unescape_id(follower), unescape_id(followee), KINDS[kind])


def size_violation(n_bytes: int, limits: RelationLimits) -> Violation | None:
    """The violation of a serialized relation of `n_bytes`, if it is over the limit."""
    if n_bytes > limits.max_bytes:
        return Violation("", OVERSIZED, f"{n_bytes} bytes > limit {limits.max_bytes}")
    return None


def relation_violations(relation: events_pb2.Relation, *, now_ms: int,
                        limits: RelationLimits) -> list[Violation]:
    """Every rule `relation` breaks, at most one per field, in this order: empty or too
    long ids, the kind, the timestamp, a self relation, the size. Empty when acceptable."""
    found: list[Violation] = []
    for name in ("follower_id", "followee_id"):
        value = getattr(relation, name)
        if not value:
            found.append(Violation(name, MISSING_FIELD, f"{name} is empty"))
        elif len(value) > limits.max_id_chars:
            found.append(Violation(name, TOO_LONG,
                                   f"{name} is longer than {limits.max_id_chars} characters"))
    if relation.kind not in KIND_NAMES:
        found.append(Violation("kind", UNKNOWN_RELATION_KIND,
                               f"kind {relation.kind} is not a known RelationKind"))
    if relation.timestamp_ms == 0:
        found.append(Violation("timestamp_ms", MISSING_FIELD, "timestamp_ms is empty"))
    elif (late_or_early := timestamp_violation(relation.timestamp_ms, now_ms,
                                               limits.max_future_skew_ms)) is not None:
        found.append(late_or_early)
    if (relation.follower_id == relation.followee_id
            and not any(v.field == "followee_id" for v in found)):
        found.append(Violation("followee_id", SELF_RELATION,
                               "followee_id is the follower_id: a user cannot relate to themself"))
    too_big = size_violation(relation.ByteSize(), limits)
    if too_big is not None:
        found.append(too_big)
    return found


def record_of(relation: events_pb2.Relation) -> tuple[bytes, bytes | None]:
    """``(key, value)`` on the topic: a removal is a tombstone (value None); otherwise the
    relation without its ``removed`` flag."""
    if relation.removed:
        return key_of(relation), None
    return key_of(relation), relation.SerializeToString()
