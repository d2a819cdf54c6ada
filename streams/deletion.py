"""A user's deletion in Redis, once, and what it tells the Kafka side (contracts.deletions).

One Lua script (:data:`DELETE_USER_SCRIPT`) does the Redis half atomically, fenced like
every other effect by the partition's applied offset (``sr:applied:{app_id}``): it
removes the user's ``uv``, ``seen``, every ``acts:{type}``, ``social``, ``following`` and
``followers`` keys and their ``hot`` membership, takes the user out of the other side's
``followers`` / ``following`` hash, removes the user's acts from their followers' social
feeds (members ``{escaped user}|...``), and moves the applied offset to the control
record's. It answers the edges it found, from which the worker makes the ``relations``
tombstones of its Kafka transaction.

Those edges are gone from Redis once the script ran, and the Kafka transaction may still
be lost (a crash before its commit): so the script also keeps them in a *receipt*
(``sr:deleting:{app_id}``, field ``{topic}:{partition}:{offset}``). A control record read
again finds its offset applied and answers the receipt instead, so the tombstones are
sent again, however often the worker dies. A receipt is removed once its partition
committed past it (:func:`obsolete_fields`), at the next commit or assignment.

On a Redis Cluster the script cannot reach the other users' slots: the user's keys go in
their own slot with the receipt kept there, and the other side of each edge goes with the
tombstones, which the relations reader applies as any removal (:mod:`streams.clustergraph`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from contracts.online import RedisKeys
from contracts.relations import KIND_NAMES, SEPARATOR, edge_key, escape_id
from contracts.social import EdgeFlags
from streams.records import Output

# ARGV: applied key, applied field, offset, receipts key, receipt field, user id, the
# user's feed-member prefix, hot key, then the user's keys (uv, seen, following,
# followers, social), the heads and tails of the following, followers and social keys,
# the number n of acts keys and the n keys. Answers {1, receipt} when applied now, {0,
# receipt or false} when the offset was applied before. The receipt is JSON
# {"following": [id, flags, ...], "followers": [id, flags, ...]}.
DELETE_USER_SCRIPT = r"""
local applied = redis.call('HGET', ARGV[1], ARGV[2])
if applied and tonumber(applied) >= tonumber(ARGV[3]) then
  return {0, redis.call('HGET', ARGV[4], ARGV[5])}
end
local user, prefix = ARGV[6], ARGV[7]
local uv, seen, following_key, followers_key, social = ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13]
local following = redis.call('HGETALL', following_key)
local followers = redis.call('HGETALL', followers_key)
local n = #prefix
for i = 1, #followers, 2 do
  local follower = followers[i]
  redis.call('HDEL', ARGV[14] .. follower .. ARGV[15], user)
  local feed = ARGV[18] .. follower .. ARGV[19]
  local gone = {}
  for _, member in ipairs(redis.call('ZRANGE', feed, 0, -1)) do
    if string.sub(member, 1, n) == prefix then
      gone[#gone + 1] = member
      if #gone >= 1000 then
        redis.call('ZREM', feed, unpack(gone))
        gone = {}
      end
    end
  end
  if #gone > 0 then
    redis.call('ZREM', feed, unpack(gone))
  end
end
for i = 1, #following, 2 do
  redis.call('HDEL', ARGV[16] .. following[i] .. ARGV[17], user)
end
local keys = {uv, seen, following_key, followers_key, social}
for t = 1, tonumber(ARGV[20]) do
  keys[#keys + 1] = ARGV[20 + t]
end
redis.call('DEL', unpack(keys))
redis.call('SREM', ARGV[8], user)
local receipt = cjson.encode({following = following, followers = followers})
redis.call('HSET', ARGV[4], ARGV[5], receipt)
redis.call('HSET', ARGV[1], ARGV[2], ARGV[3])
return {1, receipt}
"""


@dataclass(frozen=True)
class Removed:
    """What a deletion found of the user in Redis: whom they follow and who follows them,
    each with its edge flags; ``now``: applied by this call (else read from the receipt)."""

    following: dict[str, int]
    followers: dict[str, int]
    now: bool

    @property
    def edges(self) -> int:
        return sum(len(_kinds(f)) for f in (*self.following.values(), *self.followers.values()))


def deletion_args(keys: RedisKeys, *, group: str, topic: str, partition: int, offset: int,
                user_id: str) -> list[str]:
    """The arguments of :data:`DELETE_USER_SCRIPT` for the control record at `offset`."""
    args = [keys.applied(group), f"{topic}:{partition}", str(offset), keys.deleting(group),
            receipt_field(topic, partition, offset), user_id,
            escape_id(user_id) + SEPARATOR, keys.hot(),
            keys.user_vector(user_id), keys.seen(user_id), keys.following(user_id),
            keys.followers(user_id), keys.social(user_id),
            *keys.following_hashes, *keys.follower_hashes, *keys.social_feeds]
    acts = [pattern.of(user_id) for _, pattern in sorted(keys.acts_sets.items())]
    return [*args, str(len(acts)), *acts]


def receipt_field(topic: str, partition: int, offset: int) -> str:
    return f"{topic}:{partition}:{offset}"


def parse_reply(reply: Sequence[object]) -> Removed:
    """The script's answer; a deletion applied before whose receipt is gone (it committed,
    so nothing of it is read again) found nothing."""
    now, raw = int(reply[0]), reply[1]  # type: ignore[call-overload]
    if not raw:
        return Removed({}, {}, bool(now))
    found = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    return Removed(_pairs(found.get("following")), _pairs(found.get("followers")), bool(now))


def _pairs(flat: object) -> dict[str, int]:
    """``[id, flags, id, flags, ...]`` as a dict (cjson writes an empty list as ``{}``)."""
    if not isinstance(flat, list):
        return {}
    return {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def _kinds(flags: int) -> list[int]:
    decoded = EdgeFlags.decode(flags)
    return [kind for kind in sorted(KIND_NAMES) if decoded.kinds & (1 << (kind - 1))]


def relation_tombstones(user_id: str, removed: Removed, topic: str) -> list[Output]:
    """A tombstone on `topic` for every edge of the user, in either direction."""
    keys = [edge_key(user_id, followee, kind)
            for followee, flags in sorted(removed.following.items()) for kind in _kinds(flags)]
    keys += [edge_key(follower, user_id, kind)
             for follower, flags in sorted(removed.followers.items()) for kind in _kinds(flags)]
    return [(topic, None, key.encode("utf-8"), None) for key in keys]


def obsolete_fields(fields: Sequence[bytes | str], topic: str,
                    committed: Mapping[int, int]) -> list[str]:
    """Receipt fields of `topic` whose partition committed past their offset (`committed`:
    partition -> next offset committed); a field of another shape is left alone."""
    obsolete = []
    for raw in fields:
        field = raw.decode() if isinstance(raw, bytes) else raw
        name, _, rest = field.rpartition(":")
        source, _, partition = name.rpartition(":")
        if source != topic or not partition.isdigit() or not rest.isdigit():
            continue
        below = committed.get(int(partition))
        if below is not None and int(rest) < below:
            obsolete.append(field)
    return obsolete
