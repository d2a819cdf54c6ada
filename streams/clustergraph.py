"""The social graph's writes on a Redis Cluster: edges, the fan-out into followers' feeds
and a deletion's edges, each split by hash slot and fenced slot by slot (:mod:`streams.slots`).

On a single Redis each of these is one script over many users' keys (:mod:`streams.graph`,
:mod:`streams.fanout`, :mod:`streams.deletion`). A cluster runs a script on one slot's
keys only, so here every write has a *read phase* and a *write phase*:

- **An edge change** touches the follower's slot (``following:{follower}`` and, for a new
  edge, the copy of the followee's newest acts into ``social:{follower}``; for a removed
  one, the followee's acts out of it) and the followee's slot (``followers:{followee}``).
  Both hashes hold the same flags, so each side computes them from its own copy
  (:data:`FOLLOWER_SIDE`, :data:`FOLLOWEE_SIDE`); the two shares are fenced by their
  slots' fences of the ``relations`` partition, so a record read again changes each side
  once. The read phase fetches, for each edge the batch adds, whether the followee is
  hot and its newest acts of each weighted type (:func:`read_backfill`). After the write
  phase, ``hot`` is set from the followers counts of the batch's followees
  (:func:`settle_hot`): a state-derived write, the same however often it runs.
- **The fan-out of a batch's acts** reads each actor's followers and whether the actor is
  hot (:func:`read_audience`); each follower's slot then gets the acts of the people it
  follows (:data:`FEED`), in that slot's share of the events batch, fenced by its fence
  of the events partition.
- **A deletion** removes the user's keys in their slot and keeps what their edges were in
  a receipt there (:data:`FORGET_USER`); the other side of each edge and the user's acts in
  followers' feeds go with the ``relations`` tombstones the deletion sends (streams.deletion):
  the relations reader applies them as any removal.

What a cluster gives up against one Redis: the reads and the writes are not one atomic
step. An edge added between a batch's read of the followers and its write misses that
batch's acts (as if the follow came a moment later); a deleted user's edges stay visible
from the other side until the tombstones are applied (the relations reader's next batch,
typically well under a second); two relations readers of different partitions that settle
the same account's ``hot`` membership at once can leave it as the earlier one decided,
until that account's next edge change. Nothing is applied twice, and nothing acknowledged
is lost: what a failed master took with it is read back (``relations`` for edges,
streams.recovery for the rest) and applied in the slots that lost it before their fences
move on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from contracts.online import RedisKeys, slot_of
from contracts.relations import SEPARATOR, escape_id
from contracts.social import EdgeFlags, feed_member, feed_score
from streams.fanout import Fanout, SocialAct, feed_entries
from streams.graph import ALL_KINDS, EDGE_FLAGS_FUNCTION, EdgeChange, HotChanges, hot_bounds
from streams.slots import Call

# How long a deletion's receipt stays in its user's slot when no commit removes it first
# (a worker that died before its partition committed past the deletion).
RECEIPT_TTL_S = 7 * 24 * 3600

# The write of values[first..] (score, member pairs) into a feed by ZADD GT, trimmed to
# its cap, its TTL set where it has none (as the single-Redis fan-out writes).
_ADD_TO_FEED = r"""
local function add_to_feed(feed, values, first, cap, ttl)
  for start = first, #values, 1000 do  -- 500 pairs per ZADD: unpack has a limit
    local args = {'GT'}
    for i = start, math.min(start + 999, #values) do
      args[#args + 1] = values[i]
    end
    redis.call('ZADD', feed, unpack(args))
  end
  redis.call('ZREMRANGEBYRANK', feed, 0, -(cap + 1))
  if ttl > 0 then
    redis.call('EXPIRE', feed, ttl, 'NX')
  end
end
"""

# The flags of the edge with the other user ARGV[1] in the hash KEYS[1], before and after
# the change (ARGV[2..6]: kind bit, name bit, present, share_name, the kinds mask).
_FLAGS = EDGE_FLAGS_FUNCTION + r"""
local mask = tonumber(ARGV[6])
local before = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local flags = edge_flags(before, tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1',
                         ARGV[5] == '1')
"""

# KEYS: following:{follower}, social:{follower}. ARGV: followee, kind bit, name bit,
# present 0|1, share_name 0|1, the kinds mask, the followee's feed-member prefix, the feed
# cap, the feed's time to live (0: none), then score, member, ... of the followee's acts
# to copy when the edge is new.
FOLLOWER_SIDE = _ADD_TO_FEED + _FLAGS + r"""
if bit.band(flags, mask) ~= 0 then
  redis.call('HSET', KEYS[1], ARGV[1], flags)
  if bit.band(before, mask) == 0 and #ARGV > 9 then
    add_to_feed(KEYS[2], ARGV, 10, tonumber(ARGV[8]), tonumber(ARGV[9]))
  end
elseif bit.band(before, mask) ~= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  local prefix, stale = ARGV[7], {}
  for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if string.sub(member, 1, #prefix) == prefix then
      stale[#stale + 1] = member
    end
  end
  if #stale > 0 then
    redis.call('ZREM', KEYS[2], unpack(stale))
  end
end
return 1
"""

# KEYS: followers:{followee}. ARGV: follower, kind bit, name bit, present 0|1,
# share_name 0|1, the kinds mask.
FOLLOWEE_SIDE = _FLAGS + r"""
if bit.band(flags, mask) ~= 0 then
  redis.call('HSET', KEYS[1], ARGV[1], flags)
elseif bit.band(before, mask) ~= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
"""

# KEYS: social:{follower}. ARGV: the feed cap, its time to live (0: none), then score,
# member, ... (written by ZADD GT, as the single-Redis fan-out writes them).
FEED = _ADD_TO_FEED + r"""
add_to_feed(KEYS[1], ARGV, 3, tonumber(ARGV[1]), tonumber(ARGV[2]))
return 1
"""

# KEYS: the receipt, following:{user}, followers:{user}, then the user's other keys.
# ARGV: the receipt's time to live. The receipt is the JSON of streams.deletion's.
FORGET_USER = r"""
local following = redis.call('HGETALL', KEYS[2])
local followers = redis.call('HGETALL', KEYS[3])
local gone = {}
for i = 2, #KEYS do
  gone[#gone + 1] = KEYS[i]
end
redis.call('DEL', unpack(gone))
redis.call('SET', KEYS[1], cjson.encode({following = following, followers = followers}),
           'EX', ARGV[1])
return 1
"""

FUNCTIONS = {"follower_side": FOLLOWER_SIDE, "followee_side": FOLLOWEE_SIDE, "feed": FEED,
             "forget_user": FORGET_USER}


def _bits(change: EdgeChange) -> list[str]:
    bit = EdgeFlags().with_edge(change.kind, share_name=False).kinds
    return [str(EdgeFlags(kinds=bit).encode()), str(EdgeFlags(named=bit).encode()),
            str(int(change.present)), str(int(change.share_name)), str(ALL_KINDS)]


def followee_prefix(followee_id: str) -> str:
    """The start of every feed member of the followee's acts."""
    return escape_id(followee_id) + SEPARATOR


class Backfill(NamedTuple):
    """What the read phase found for a batch's new edges: the hot followees, and each
    other followee's acts to copy as ``[score, member, ...]`` (feed format)."""

    hot: frozenset[str]
    acts: Mapping[str, list[str]]


async def read_backfill(client: Any, keys: RedisKeys, changes: Sequence[EdgeChange],
                        fanout: Fanout | None) -> Backfill:
    """The read phase of an edges batch: for the followees of its added edges, whether
    each is hot and its newest ``fanout.backfill`` acts of each weighted type, scored as
    the fan-out scores them (pipelined; none without a backfill)."""
    if fanout is None or not fanout.backfill:
        return Backfill(frozenset(), {})
    followees = list(dict.fromkeys(c.followee_id for c in changes if c.present))
    if not followees:
        return Backfill(frozenset(), {})
    types = sorted(fanout.weights)
    async with client.pipeline(transaction=False) as pipe:
        for followee in followees:
            pipe.sismember(keys.hot(), followee)
            for event_type in types:
                pipe.zrevrange(keys.acts(event_type, followee), 0, fanout.backfill - 1,
                               withscores=True)
        replies = await pipe.execute()
    hot: set[str] = set()
    acts: dict[str, list[str]] = {}
    per = 1 + len(types)
    for i, followee in enumerate(followees):
        if int(replies[i * per]):
            hot.add(followee)
            continue
        flat: list[str] = []
        for event_type, found in zip(types, replies[i * per + 1:(i + 1) * per], strict=True):
            weight = fanout.weights[event_type]
            for raw, at_ms in found:
                item = raw.decode() if isinstance(raw, bytes) else str(raw)
                flat += (repr(math.log(weight) + float(at_ms) / fanout.tau_ms),
                         feed_member(followee, event_type, item))
        acts[followee] = flat
    return Backfill(frozenset(hot), acts)


def edge_calls(keys: RedisKeys, changes: Sequence[EdgeChange], backfill: Backfill,
               fanout: Fanout | None) -> dict[int, list[tuple[EdgeChange, Call]]]:
    """Slot -> the calls of the changes in it, in record order: each change's follower
    side in the follower's slot, its followee side in the followee's."""
    cap, ttl = (fanout.cap, fanout.ttl_s) if fanout is not None else (1, 0)
    calls: dict[int, list[tuple[EdgeChange, Call]]] = {}
    for change in changes:
        bits = _bits(change)
        copied = backfill.acts.get(change.followee_id, []) if change.present else []
        follower = Call("follower_side", [keys.following(change.follower_id),
                                          keys.social(change.follower_id)],
                        [change.followee_id, *bits, followee_prefix(change.followee_id),
                         str(cap), str(ttl), *copied])
        followee = Call("followee_side", [keys.followers(change.followee_id)],
                        [change.follower_id, *bits])
        calls.setdefault(slot_of(follower.keys[0]), []).append((change, follower))
        calls.setdefault(slot_of(followee.keys[0]), []).append((change, followee))
    return calls


async def settle_hot(client: Any, keys: RedisKeys, followees: Iterable[str],
                     threshold: int) -> HotChanges:
    """``hot`` from the followers counts of `followees` (in with more than the enter
    bound, out at the leave bound or below, as it was in between): derived from the
    state, so running it again changes nothing."""
    names = list(dict.fromkeys(followees))
    enter, leave = hot_bounds(threshold)
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hlen(keys.followers(name))
        counts = await pipe.execute()
    entering = [n for n, count in zip(names, counts, strict=True) if int(count) > enter]
    leaving = [n for n, count in zip(names, counts, strict=True) if int(count) <= leave]
    entered = int(await client.sadd(keys.hot(), *entering)) if entering else 0
    left = int(await client.srem(keys.hot(), *leaving)) if leaving else 0
    return HotChanges(entered, left, int(await client.scard(keys.hot())))


class Audience(NamedTuple):
    """The read phase of a fan-out: each actor's followers, and the hot actors (skipped)."""

    followers: Mapping[str, list[str]]
    hot: frozenset[str]


async def read_audience(client: Any, keys: RedisKeys, acts: Sequence[SocialAct],
                        fanout: Fanout) -> Audience:
    """Whether each actor of the weighted `acts` is hot (one SMISMEMBER), then the
    followers of the others (pipelined on their nodes): a hot account's followers, maybe
    millions, are never read."""
    actors = list(dict.fromkeys(a.actor_id for a in acts if a.event_type in fanout.weights))
    if not actors:
        return Audience({}, frozenset())
    hot = {actor for actor, found in zip(actors, await client.smismember(keys.hot(), actors),
                                         strict=True) if int(found)}
    others = [actor for actor in actors if actor not in hot]
    followers: dict[str, list[str]] = {}
    if others:
        async with client.pipeline(transaction=False) as pipe:
            for actor in others:
                pipe.hkeys(keys.followers(actor))
            for actor, names in zip(others, await pipe.execute(), strict=True):
                if names:
                    followers[actor] = [f.decode() if isinstance(f, bytes) else str(f)
                                        for f in names]
    return Audience(followers, frozenset(hot))


def audience_feeds(keys: RedisKeys, acts: Sequence[SocialAct], audience: Audience,
                   weights: Mapping[int, float], skip: Iterable[str] = ()
                   ) -> dict[int, dict[str, list[int]]]:
    """Slot -> follower there -> the indexes of the `acts` (weighted, of actors not hot
    and not in `skip`) that go into its feed; computed once per batch."""
    skipped = set(skip)
    slots: dict[str, int] = {}  # follower -> its feed's slot
    feeds: dict[int, dict[str, list[int]]] = {}
    for index, act in enumerate(acts):
        if act.event_type not in weights or act.actor_id in skipped:
            continue
        for follower in audience.followers.get(act.actor_id, ()):
            slot = slots.get(follower)
            if slot is None:
                slot = slots[follower] = slot_of(keys.social(follower))
            feeds.setdefault(slot, {}).setdefault(follower, []).append(index)
    return feeds


def feed_calls(keys: RedisKeys, feeds: Mapping[str, Sequence[SocialAct]], fanout: Fanout
               ) -> tuple[list[Call], int]:
    """The feed writes of one slot: one call per follower (`feeds`: follower -> the acts
    for its feed), each act once with its highest score; and how many members they write."""
    calls, writes = [], 0
    for follower, theirs in feeds.items():
        flat: list[str] = []
        for entry in feed_entries(theirs, fanout):
            for member, score in zip(entry[1::2], entry[2::2], strict=True):
                flat += (score, member)
        if flat:
            calls.append(Call("feed", [keys.social(follower)],
                              [str(fanout.cap), str(fanout.ttl_s), *flat]))
            writes += len(flat) // 2
    return calls, writes


def feed_writes(calls: Sequence[Call]) -> int:
    """How many feed members the :data:`FEED` calls among `calls` write."""
    return sum((len(c.args) - 2) // 2 for c in calls if c.name == "feed")


def skipped_acts(acts: Sequence[SocialAct], audience: Audience, fanout: Fanout) -> int:
    """How many weighted acts of hot actors the fan-out skipped (read on demand)."""
    return sum(len(e) // 2 for e in feed_entries(
        [a for a in acts if a.actor_id in audience.hot], fanout))


def receipt_key(keys: RedisKeys, user_id: str, *, group: str, topic: str, partition: int,
                offset: int) -> str:
    """The receipt of a deletion on a cluster: a string in the user's slot."""
    return keys.deletion_receipts.of(user_id) + f":{group}:{topic}:{partition}:{offset}"


def forget_call(keys: RedisKeys, user_id: str, receipt: str, others: Sequence[str]) -> Call:
    """The deletion of the user's keys in their slot, keeping their edges in `receipt`."""
    return Call("forget_user", [receipt, keys.following(user_id), keys.followers(user_id),
                                *(k for k in others if k not in (keys.following(user_id),
                                                                 keys.followers(user_id)))],
                [str(RECEIPT_TTL_S)])


def receipt_json(raw: bytes | str | None) -> str | None:
    """The receipt as streams.deletion parses it."""
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    json.loads(text)  # a receipt is JSON; anything else is a defect to see at once
    return text
