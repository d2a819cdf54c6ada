"""The online state in Redis that streams writes and serving reads (docs/contracts.md §3).

One definition of each part both sides must agree on: the key names (:class:`RedisKeys`),
the event-type names in ``acts`` keys (from ``protos/events.proto``), the fields and byte
format of a user vector, the format and meaning of a trending set's base time, and the
script that reads a batch of users' state.

Every key, those a Lua script builds included, comes from :class:`RedisKeys`: a script
gets a key's text around its id (a :class:`KeyPattern`) as an argument and spells none
itself. Keys one script or transaction touches together share their id, and the id is
the key's Redis Cluster hash tag (:func:`_keyed`), so they lie in one slot.
"""

from __future__ import annotations

import math
from binascii import crc_hqx
from collections.abc import Sequence
from functools import cache
from string import Template
from typing import NamedTuple, cast

import numpy as np
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from protos import events_pb2

# Lower-case EventType name -> its number; the names are the ``{type}`` of
# ``acts:{type}:{user}``.
EVENT_TYPE_NUMBERS: dict[str, events_pb2.EventType] = {
    name.lower(): cast("events_pb2.EventType", number)
    for name, number in events_pb2.EventType.items()
    if number != events_pb2.EVENT_TYPE_UNSPECIFIED
}
EVENT_TYPE_NAMES: dict[int, str] = {number: name for name, number in EVENT_TYPE_NUMBERS.items()}
# The names in EventType order: ``("view", "click", "add_to_cart", "purchase", "rating")``.
EVENT_TYPES: tuple[str, ...] = tuple(EVENT_TYPE_NAMES[n] for n in sorted(EVENT_TYPE_NAMES))

# Fields of the ``uv:{user}`` hash.
VECTOR_FIELD = "vec"  # float32 little-endian bytes (encode_vector)
VERSION_FIELD = "version"  # the model version the vector is of
NEWEST_FIELD = "ts"  # event time (ms) of the newest event folded in
WRITTEN_AT_FIELD = "at"  # wall time (ms) of the write

VECTOR_DTYPE = np.dtype("<f4")


class KeyPattern(NamedTuple):
    """The keys of one kind: ``head + id + tail`` for an id (a user, a window, a group)."""

    head: str
    tail: str

    def of(self, key_id: str) -> str:
        return self.head + key_id + self.tail


def _keyed(prefix: str, name: str, suffix: str = "") -> KeyPattern:
    """``{prefix}{name}:{{id}}{suffix}``: the id is the key's Redis Cluster hash tag, so
    every key of one id (a user's ``uv``, ``seen``, ``acts``, ``social``, ``following`` and
    ``followers``; a window's set and base) lies in one slot, on a single Redis as in a
    cluster. (Redis hashes the text between the first ``{`` and the first ``}`` after it:
    an id with braces of its own still gives all its keys one tag.)"""
    return KeyPattern(f"{prefix}{name}:{{", "}" + suffix)


@cache
def slot_tags() -> tuple[str, ...]:
    """One short hash tag per Redis Cluster slot: ``slot_tags()[s]`` hashes to slot ``s``
    (the smallest decimal number that does; found once, in a fraction of a second)."""
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    missing, n = REDIS_CLUSTER_HASH_SLOTS, 0
    while missing:
        tag = str(n)
        slot = crc_hqx(tag.encode(), 0) % REDIS_CLUSTER_HASH_SLOTS  # key_slot of a braceless key
        if tags[slot] is None:
            tags[slot] = tag
            missing -= 1
        n += 1
    return tuple(cast("list[str]", tags))


def slot_of(key: str) -> int:
    """The Redis Cluster slot of a key (its hash tag's, when it has one)."""
    return int(key_slot(key.encode("utf-8")))


class RedisKeys:
    """Every key of the online state under one prefix (``sr:`` by default). The patterns
    are built once; building a key is one concatenation."""

    __slots__ = ("prefix", "user_vectors", "seen_sets", "acts_sets", "trending_sets",
                 "trending_bases", "applied_hashes", "following_hashes", "follower_hashes",
                 "social_feeds", "deletion_receipts", "slot_fences", "_popular", "_hot")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.user_vectors = _keyed(prefix, "uv")
        self.seen_sets = _keyed(prefix, "seen")
        # EventType number -> acts:{type}:{user}
        self.acts_sets = {n: _keyed(prefix, f"acts:{name}") for n, name in EVENT_TYPE_NAMES.items()}
        self.trending_sets = _keyed(prefix, "trending")
        self.trending_bases = _keyed(prefix, "trending", ":base")
        self.applied_hashes = _keyed(prefix, "applied")
        # Per consumer group: deletions applied to Redis whose Kafka outputs are not yet
        # committed (streams.deletion), so a deletion read again after a crash still
        # knows the edges it must tombstone.
        self.deletion_receipts = _keyed(prefix, "deleting")
        # On a Redis Cluster, per consumer group and slot: the applied offsets of the
        # effects that lie in that slot (streams.slots), tagged to lie in it too.
        self.slot_fences = _keyed(prefix, "fence")
        # The social graph and feed (contracts.social): whom a user follows, who follows
        # them, what the people they follow did; accounts read on demand (fan-in).
        self.following_hashes = _keyed(prefix, "following")
        self.follower_hashes = _keyed(prefix, "followers")
        self.social_feeds = _keyed(prefix, "social")
        self._popular = f"{prefix}popular"
        self._hot = f"{prefix}hot"

    def __repr__(self) -> str:
        return f"RedisKeys({self.prefix!r})"

    def user_vector(self, user_id: str) -> str:
        return self.user_vectors.of(user_id)

    def seen(self, user_id: str) -> str:
        return self.seen_sets.of(user_id)

    def acts(self, event_type: int, user_id: str) -> str:
        """Items the user acted on with this ``EventType`` (``acts:purchase:{user}``...);
        KeyError for a number that is not a known type."""
        return self.acts_sets[event_type].of(user_id)

    def popular(self) -> str:
        return self._popular

    def trending(self, window: str) -> str:
        return self.trending_sets.of(window)

    def trending_base(self, window: str) -> str:
        return self.trending_bases.of(window)

    def applied(self, group: str) -> str:
        return self.applied_hashes.of(group)

    def fence(self, group: str, slot: int) -> str:
        """Hash ``fence:{tag}:{group}`` in Redis Cluster slot `slot` (its tag from
        :func:`slot_tags`): field ``{topic}:{partition}`` -> the newest offset of that
        partition whose effects in the slot are applied."""
        return self.slot_fences.of(slot_tags()[slot]) + ":" + group

    def deleting(self, group: str) -> str:
        """Hash: ``{topic}:{partition}:{offset}`` of a deletion's control record -> what it
        removed (the user's edges), until its partition commits past it."""
        return self.deletion_receipts.of(group)

    def following(self, user_id: str) -> str:
        """Hash: followee id -> edge flags (contracts.social.EdgeFlags) of the user's edges."""
        return self.following_hashes.of(user_id)

    def followers(self, user_id: str) -> str:
        """Hash: follower id -> edge flags, the same edges seen from the followee."""
        return self.follower_hashes.of(user_id)

    def social(self, user_id: str) -> str:
        """Sorted set: the user's social feed (contracts.social.feed_member / feed_score)."""
        return self.social_feeds.of(user_id)

    def hot(self) -> str:
        """Set: accounts with more followers than the fan-out threshold; their acts are
        read on demand by their followers' requests instead of written to every feed."""
        return self._hot


class VectorFormatError(ValueError):
    """Bytes that are not a usable user vector."""


def encode_vector(vector: np.ndarray) -> bytes:
    """A 1-D vector as the ``vec`` field: float32 little-endian bytes. The reader, not the
    writer, rejects a vector that is not finite, so one user's never fails a batch."""
    array = np.asarray(vector, dtype=VECTOR_DTYPE)
    if array.ndim != 1 or not array.size:
        raise ValueError(f"a user vector is 1-D and not empty, not of shape {array.shape}")
    return array.tobytes()


def decode_vector(raw: bytes, dim: int | None = None) -> np.ndarray:
    """The ``vec`` field as a read-only float32 [dim] vector (no copy). Raises
    :class:`VectorFormatError` for bytes of no whole, non-zero number of floats, of
    another dimension than `dim` (when given), not finite, or all zeros (no direction)."""
    if not raw or len(raw) % VECTOR_DTYPE.itemsize:
        raise VectorFormatError(f"{len(raw)} bytes are not a whole number of float32 values")
    vector = np.frombuffer(raw, dtype=VECTOR_DTYPE).astype(np.float32, copy=False)
    if dim is not None and len(vector) != dim:
        raise VectorFormatError(f"{len(vector)} dimensions, not {dim}")
    if not np.isfinite(vector).all():
        raise VectorFormatError("values that are not finite")
    if not vector.any():
        raise VectorFormatError("all zeros")
    return vector


def encode_base_ms(base_ms: int) -> str:
    """A trending set's base time as its ``trending:{window}:base`` value: ms, decimal."""
    return str(int(base_ms))


def decode_base_ms(raw: bytes | str) -> float:
    """A base time (ms) as written by :func:`encode_base_ms` (or any finite decimal);
    ValueError for anything else."""
    base = float(raw)
    if not math.isfinite(base):
        raise ValueError(f"base time {raw!r} is not finite")
    return base


def decay_factor(*, base_ms: float, now_ms: float, tau_ms: float) -> float:
    """``exp(−(now − base) / τ)``: what turns a trending score into its count decayed to
    `now_ms`. A base ahead of the clock (events up to the allowed skew in the future)
    counts as now."""
    return math.exp(-max(now_ms - base_ms, 0.0) / tau_ms)


def decayed(score: float, base_ms: float, now_ms: float, tau_ms: float) -> float:
    """A stored trending score as the decayed count ``Σ w · exp(−(now − t) / τ)``."""
    return score * decay_factor(base_ms=base_ms, now_ms=now_ms, tau_ms=tau_ms)


def decayed_counts(pairs: list[tuple[str, float]], *, base_ms: float | None, now_ms: float,
                   tau_ms: float) -> list[tuple[str, float]]:
    """A window's ``(item, score)`` pairs as counts decayed to `now_ms`, the order
    unchanged; without a base (a set streams did not write) the scores are counts already."""
    if base_ms is None:
        return pairs
    factor = decay_factor(base_ms=base_ms, now_ms=now_ms, tau_ms=tau_ms)
    return [(item_id, score * factor) for item_id, score in pairs]


# Every user's vector, version, newest seen items and excluded-type items, read by one
# server-side call per batch of users (three commands per user through a client cost far
# more to pack and parse than the reads cost Redis). ARGV (read_users_args): the head and
# tail of the uv keys, of the seen keys, the seen limit, the number of event types n, the
# head and tail of each type's acts keys, then the user ids. Answers one
# {vec, version, seen, acts} per user; a missing field is a nil reply.
READ_USERS_SCRIPT = Template("""
local uv_head, uv_tail = ARGV[1], ARGV[2]
local seen_head, seen_tail = ARGV[3], ARGV[4]
local seen_limit = tonumber(ARGV[5])
local n_types = tonumber(ARGV[6])
local answers = {}
for u = 7 + 2 * n_types, #ARGV do
  local user = ARGV[u]
  local vector = redis.call('HMGET', uv_head .. user .. uv_tail, '$vec', '$version')
  local seen = {}
  if seen_limit > 0 then
    seen = redis.call('ZREVRANGE', seen_head .. user .. seen_tail, 0, seen_limit - 1)
  end
  local acts = {}
  if n_types > 0 then
    local keys = {}
    for t = 1, n_types do
      keys[t] = ARGV[5 + 2 * t] .. user .. ARGV[6 + 2 * t]
    end
    acts = redis.call('ZUNION', n_types, unpack(keys))
  end
  answers[#answers + 1] = {vector[1], vector[2], seen, acts}
end
return answers
""").substitute(vec=VECTOR_FIELD, version=VERSION_FIELD)


def read_users_args(keys: RedisKeys, *, seen_limit: int, types: Sequence[str]) -> list[str]:
    """The arguments of :data:`READ_USERS_SCRIPT` before the user ids: `seen_limit` newest
    seen items, and the union of the acts sets of `types` (names of EVENT_TYPES)."""
    unknown = set(types) - set(EVENT_TYPES)
    if unknown:
        raise ValueError(f"unknown event types {sorted(unknown)}; known: {list(EVENT_TYPES)}")
    args = [*keys.user_vectors, *keys.seen_sets, str(seen_limit), str(len(types))]
    for name in types:
        args += keys.acts_sets[EVENT_TYPE_NUMBERS[name]]
    return args
