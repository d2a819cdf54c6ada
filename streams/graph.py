"""The social graph in Redis from the records of ``relations``: which records are edges,
and the server-side write of a batch of them (layout in :mod:`contracts.social`).

A record's key names its edge (:func:`contracts.relations.parse_key`); a tombstone (or a
value whose ``removed`` is set) removes that kind of edge, a value adds it with its
``share_name``. A record that is not an acceptable edge is rejected with its dead-letter
reason: a key that is no edge key, or a value naming another edge than its key
(``bad_key``); a value over the size limit (``oversized``), not a ``Relation``
(``undecodable``), or breaking a rule of :func:`contracts.relations.relation_violations`
(``self_relation``, ``unknown_relation_kind``, ``too_long``, ``missing_field``,
``bad_timestamp``).

``following:{follower}`` field followee and ``followers:{followee}`` field follower hold
the same :class:`contracts.social.EdgeFlags`; the field goes when no kind is left, and so
do the followee's acts in the follower's feed. A new edge (no kind before) to an account
that is not hot copies the account's newest acts of each weighted type (``backfill`` of
each, from its ``acts`` sets) into the follower's feed, scored as the fan-out scores
them: a follow made after the acts finds them as one made before would.

An account enters ``hot`` when it has more followers than the fan-out threshold and
leaves it when it is down to nine tenths of the threshold (:func:`hot_bounds`): an account
hovering around the threshold does not flip between fan-out and fan-in with each follow
and unfollow.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import NamedTuple

from google.protobuf.message import DecodeError

from contracts.online import RedisKeys
from contracts.records import decode_record
from contracts.relations import (
    BAD_KEY,
    SEPARATOR,
    BadKey,
    RelationLimits,
    escape_id,
    key_of,
    parse_key,
    relation_violations,
    size_violation,
)
from contracts.social import EdgeFlags
from protos import events_pb2
from streams.errors import Undecodable
from streams.fanout import Fanout
from streams.records import Record, Rejected

ALL_KINDS = EdgeFlags(kinds=0xFF).encode()

# ARGV (graph_args): the head and tail of the following keys, of the followers keys, of the
# social keys, the hot set key, the enter and leave bounds of hot (hot above enter, not
# hot at or below leave), the mask of the kind bits, a JSON list of changes
# ``[follower, followee, kind bit, name bit, present 0|1, share_name 0|1, feed prefix]``
# in record order, the feed cap, the acts copied per type into a new follower's feed, the
# decay constant (ms), the number of types n, then per type the head and tail of its acts
# keys, its EventType number and the log of its weight, last the time to live (s) a feed
# without one gets (0: none). Answers {accounts that entered
# hot, that left it, accounts hot now}.
# An edge's flags after a change: the kind's bit set (with its name bit as share_name
# says) when present, both cleared when not.
EDGE_FLAGS_FUNCTION = r"""
local function edge_flags(before, kind_bit, name_bit, present, share_name)
  if not present then
    return bit.band(before, bit.bnot(bit.bor(kind_bit, name_bit)))
  end
  local flags = bit.bor(before, kind_bit)
  if share_name then
    return bit.bor(flags, name_bit)
  end
  return bit.band(flags, bit.bnot(name_bit))
end
"""

GRAPH_SCRIPT = EDGE_FLAGS_FUNCTION + r"""
local changes = cjson.decode(ARGV[11])
local enter, leave, kinds_mask = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local cap, backfill, tau = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local n_types = tonumber(ARGV[15])
local ttl = tonumber(ARGV[#ARGV])
local function escape(text)
  return (string.gsub(string.gsub(text, '%%', '%%25'), '|', '%%7C'))
end
-- The followee's newest acts into a new follower's feed, scored as the fan-out scores them.
local function copy_acts(follower, followee, prefix)
  local args = {'GT'}
  for t = 1, n_types do
    local base = 16 + 4 * (t - 1)
    local acts = redis.call('ZREVRANGE', ARGV[base] .. followee .. ARGV[base + 1], 0,
                            backfill - 1, 'WITHSCORES')
    for a = 1, #acts, 2 do
      local score = tonumber(ARGV[base + 3]) + tonumber(acts[a + 1]) / tau
      args[#args + 1] = string.format('%.17g', score)
      args[#args + 1] = prefix .. ARGV[base + 2] .. '|' .. escape(acts[a])
    end
  end
  if #args > 1 then
    local feed = ARGV[5] .. follower .. ARGV[6]
    redis.call('ZADD', feed, unpack(args))
    redis.call('ZREMRANGEBYRANK', feed, 0, -(cap + 1))
    if ttl > 0 then
      redis.call('EXPIRE', feed, ttl, 'NX')
    end
  end
end
local followees = {}
for c = 1, #changes do
  local change = changes[c]
  local follower, followee = change[1], change[2]
  local kind_bit, name_bit = change[3], change[4]
  local following = ARGV[1] .. follower .. ARGV[2]
  local followers = ARGV[3] .. followee .. ARGV[4]
  local before = tonumber(redis.call('HGET', following, followee) or '0')
  local flags = edge_flags(before, kind_bit, name_bit, change[5] == 1, change[6] == 1)
  if bit.band(flags, kinds_mask) ~= 0 then
    redis.call('HSET', following, followee, flags)
    redis.call('HSET', followers, follower, flags)
    if bit.band(before, kinds_mask) == 0 and backfill > 0 and n_types > 0
        and redis.call('SISMEMBER', ARGV[7], followee) == 0 then
      copy_acts(follower, followee, change[7])
    end
  elseif bit.band(before, kinds_mask) ~= 0 then
    redis.call('HDEL', following, followee)
    redis.call('HDEL', followers, follower)
    local feed = ARGV[5] .. follower .. ARGV[6]
    local prefix = change[7]
    local stale = {}
    for _, member in ipairs(redis.call('ZRANGE', feed, 0, -1)) do
      if string.sub(member, 1, #prefix) == prefix then
        stale[#stale + 1] = member
      end
    end
    if #stale > 0 then
      redis.call('ZREM', feed, unpack(stale))
    end
  end
  followees[followee] = true
end
local entered, left = 0, 0
for followee in pairs(followees) do
  local n = redis.call('HLEN', ARGV[3] .. followee .. ARGV[4])
  if n > enter then
    entered = entered + redis.call('SADD', ARGV[7], followee)
  elseif n <= leave then
    left = left + redis.call('SREM', ARGV[7], followee)
  end
end
return {entered, left, redis.call('SCARD', ARGV[7])}
"""


class EdgeChange(NamedTuple):
    """One record's change of an edge; ``partition`` and ``offset`` locate the record."""

    follower_id: str
    followee_id: str
    kind: int
    present: bool
    share_name: bool
    partition: int
    offset: int


class HotChanges(NamedTuple):
    """What a batch did to ``hot``: accounts that entered it, left it, and how many are in it."""

    entered: int
    left: int
    hot: int


def hot_bounds(threshold: int) -> tuple[int, int]:
    """``(enter, leave)``: an account is hot with more than `enter` followers and stops
    being hot with `leave` or fewer (nine tenths of the threshold, rounded down)."""
    return threshold, threshold * 9 // 10


def relation_change(record: Record, *, now_ms: int,
                    limits: RelationLimits) -> EdgeChange | Rejected:
    """What `record` of ``relations`` does to the graph, or why it is rejected."""
    try:
        edge = parse_key(record.key or b"")
    except BadKey as error:
        return Rejected(BAD_KEY, str(error))
    if record.value is None:
        return EdgeChange(edge.follower_id, edge.followee_id, edge.kind, False, False,
                          record.partition, record.offset)
    too_big = size_violation(len(record.value), limits)
    if too_big is not None:
        return Rejected(too_big.reason, too_big.description)
    try:
        relation = decode_record(record.value, events_pb2.Relation)
    except DecodeError as error:
        return Rejected(Undecodable.reason, f"not a Relation: {error}")
    violations = relation_violations(relation, now_ms=now_ms, limits=limits)
    if violations:
        return Rejected(violations[0].reason, "; ".join(v.description for v in violations))
    if key_of(relation) != record.key:
        return Rejected(BAD_KEY, f"the key names another edge than the value "
                                 f"({key_of(relation).decode()!r})")
    return EdgeChange(relation.follower_id, relation.followee_id, relation.kind,
                      not relation.removed, relation.share_name and not relation.removed,
                      record.partition, record.offset)


def relation_outcomes(records: Sequence[Record], *, now_ms: int, limits: RelationLimits,
                      ) -> list[tuple[Record, EdgeChange | Rejected]]:
    """Each record with its change or rejection, in order."""
    return [(r, relation_change(r, now_ms=now_ms, limits=limits)) for r in records]


def change_entry(change: EdgeChange) -> list[object]:
    """A change as :data:`GRAPH_SCRIPT` takes it."""
    bit = EdgeFlags().with_edge(change.kind, share_name=False).kinds
    return [change.follower_id, change.followee_id, EdgeFlags(kinds=bit).encode(),
            EdgeFlags(named=bit).encode(), int(change.present), int(change.share_name),
            escape_id(change.followee_id) + SEPARATOR]


def graph_args(keys: RedisKeys, changes: Sequence[EdgeChange], threshold: int,
               fanout: Fanout | None) -> list[str]:
    """The arguments of :data:`GRAPH_SCRIPT` for `changes`, in order; without `fanout`
    (or with its ``backfill`` 0) a new follow copies no acts."""
    enter, leave = hot_bounds(threshold)
    args = [*keys.following_hashes, *keys.follower_hashes, *keys.social_feeds, keys.hot(),
            str(enter), str(leave), str(ALL_KINDS),
            json.dumps([change_entry(c) for c in changes], separators=(",", ":"),
                       ensure_ascii=False)]
    if fanout is None or not fanout.backfill:
        return [*args, "1", "0", "1", "0", "0"]
    args += [str(fanout.cap), str(fanout.backfill), repr(fanout.tau_ms), str(len(fanout.weights))]
    for event_type in sorted(fanout.weights):
        args += [*keys.acts_sets[event_type], str(event_type),
                 repr(math.log(fanout.weights[event_type]))]
    return [*args, str(fanout.ttl_s)]  # last: the feeds' time to live


def hot_changes(reply: Sequence[int]) -> HotChanges:
    """The script's answer as counts."""
    entered, left, hot = reply
    return HotChanges(int(entered), int(left), int(hot))
