"""Fan-out on write: a batch's accepted acts written into the social feeds of the actors'
followers (``social:{follower}``, format in :mod:`contracts.social`).

An act whose event type has a social weight goes to every follower's feed as
``feed_member(actor, type, item)`` with ``feed_score(weight, event time, tau)`` by
``ZADD GT`` (an act keeps its newest time), and each feed written is trimmed to its
``cap`` highest members. Accounts in the ``hot`` set (more followers than the fan-out
threshold, :mod:`streams.graph`) are skipped: their followers' requests read the
account's own ``acts`` sets instead (fan-in on read), so one account with a hundred
thousand followers costs a batch one ``SISMEMBER``, not a hundred thousand writes.

The whole batch is one server-side call, queued in the batch's online transaction
(:mod:`streams.online`), so it is applied exactly when the batch's other effects are:
once per record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from contracts.online import RedisKeys
from contracts.social import feed_member, feed_score

# ARGV (fanout_args): the head and tail of the followers keys, of the social keys, the hot
# set key, the feed cap, then a JSON list with one entry per actor, ``[actor, member,
# score, member, score, ...]`` (scores as decimal strings, written exactly as given), then
# the time to live (s) a feed without one gets (0: none). Answers {feed writes, acts of hot actors skipped}.
FANOUT_SCRIPT = r"""
local acts = cjson.decode(ARGV[7])
local cap = tonumber(ARGV[6])
local touched = {}
local writes, skipped = 0, 0
for a = 1, #acts do
  local entry = acts[a]
  local actor = entry[1]
  local n = (#entry - 1) / 2
  if redis.call('SISMEMBER', ARGV[5], actor) == 1 then
    skipped = skipped + n
  else
    local args = {'GT'}
    for i = 2, #entry, 2 do
      args[#args + 1] = entry[i + 1]
      args[#args + 1] = entry[i]
    end
    local followers = redis.call('HKEYS', ARGV[1] .. actor .. ARGV[2])
    for f = 1, #followers do
      local feed = ARGV[3] .. followers[f] .. ARGV[4]
      redis.call('ZADD', feed, unpack(args))
      touched[feed] = true
    end
    writes = writes + n * #followers
  end
end
local ttl = tonumber(ARGV[8])
for feed in pairs(touched) do
  redis.call('ZREMRANGEBYRANK', feed, 0, -(cap + 1))
  if ttl > 0 then
    redis.call('EXPIRE', feed, ttl, 'NX')
  end
end
return {writes, skipped}
"""


@dataclass(frozen=True)
class Fanout:
    """What the fan-out writes: weights by ``EventType`` number (a type without one is
    not written), the decay constant and the feed cap; and how many of a followee's
    newest acts of each type a new follow copies into the follower's feed. A feed key
    it creates gets the users' time to live ``ttl_s`` (0: none); one that has a TTL keeps
    it, so a followee's acts never keep an inactive follower's feed alive."""

    weights: Mapping[int, float]
    tau_ms: float
    cap: int
    backfill: int = 0
    ttl_s: int = 0


class SocialAct(NamedTuple):
    """An accepted event as the fan-out sees it."""

    actor_id: str
    event_type: int
    item_id: str
    timestamp_ms: int


class FanoutCounts(NamedTuple):
    """What one batch's fan-out did: feed members written, acts of hot actors skipped."""

    writes: int
    skipped: int


def feed_entries(acts: Iterable[SocialAct], fanout: Fanout) -> list[list[str]]:
    """One ``[actor, member, score, ...]`` entry per actor of the acts with a weight, each
    member once with the highest score of the batch (what ``ZADD GT`` keeps anyway)."""
    by_actor: dict[str, dict[str, float]] = {}
    for act in acts:
        weight = fanout.weights.get(act.event_type)
        if weight is None:
            continue
        member = feed_member(act.actor_id, act.event_type, act.item_id)
        score = feed_score(weight, act.timestamp_ms, fanout.tau_ms)
        members = by_actor.setdefault(act.actor_id, {})
        if members.get(member, score) <= score:
            members[member] = score
    entries = []
    for actor, members in by_actor.items():
        entry = [actor]
        for member, score in members.items():
            entry += (member, repr(score))
        entries.append(entry)
    return entries


def fanout_args(keys: RedisKeys, fanout: Fanout, entries: list[list[str]]) -> list[str]:
    """The arguments of :data:`FANOUT_SCRIPT` for `entries` (:func:`feed_entries`)."""
    return [*keys.follower_hashes, *keys.social_feeds, keys.hot(), str(fanout.cap),
            json.dumps(entries, separators=(",", ":"), ensure_ascii=False), str(fanout.ttl_s)]


def fanout_counts(reply: Sequence[int]) -> FanoutCounts:
    """The script's answer as counts."""
    writes, skipped = reply
    return FanoutCounts(int(writes), int(skipped))
