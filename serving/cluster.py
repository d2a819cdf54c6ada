"""Serving's reads on a Redis Cluster (a ``redis+cluster://`` URL: redis-py's cluster
client, contracts.security).

A cluster runs a script on the node of the slot it is routed to, and the script may touch
only keys of that slot. Every key of one user carries the user's id as its hash tag
(contracts.online), so:

- the user read is one call of the contract's script per slot of a batch, routed by the
  first user's ``uv`` key as KEYS[1] (the script reads its ARGV only);
- the social read touches the user's own keys, the global ``hot`` set and the acts of the
  hot accounts the user follows, which lie in other slots: it is the contract's script
  on the user's own keys (no hot followee read there), then the hot set, then the
  followees' acts, merged here into the reply the script gives on a single Redis, so the
  same parser makes the same items of it.

The calls of one step go through redis-py's cluster pipeline: one round trip per node, to
every node at once; the client follows MOVED and ASK redirections. A cluster that does not
cover every slot answers an error (``All slots are not covered``, ``CLUSTERDOWN``), never
an empty reply: :data:`STORE_ERRORS` are what the callers turn into UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from contracts.online import KeyPattern, RedisKeys
from contracts.social import READ_SOCIAL_SCRIPT, SocialReadLimits, read_social_args

# What a read of the online state raises when Redis, or a node or slot of a cluster, does
# not answer (redis-py's cluster client raises RedisClusterException, no RedisError, when
# it finds slots no node serves).
STORE_ERRORS = (RedisError, RedisClusterException, OSError)

SMISMEMBER_CHUNK = 1000  # members asked per SMISMEMBER, as the contract's script asks


def is_cluster(client: Redis) -> bool:
    """Whether `client` is redis-py's cluster client."""
    return isinstance(client, RedisCluster)


def by_slot(client: RedisCluster, keys: Sequence[str]) -> list[list[int]]:
    """The positions of `keys`, grouped by hash slot (in order of first appearance)."""
    groups: dict[int, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(client.keyslot(key), []).append(position)
    return list(groups.values())


def _raise_errors(replies: Sequence[Any]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


async def eval_routed(client: RedisCluster, script: str,
                      calls: Sequence[tuple[str, Sequence[str | bytes]]]) -> list[Any]:
    """The reply of `script` to each ``(key, argv)``: ``EVALSHA sha 1 key *argv``, routed
    by `key`, all in one cluster pipeline. A node that lost the script (restarted, failed
    over, flushed) gets it again on every primary, and the calls are sent once more.
    Raises the first error a call answered."""
    sha = hashlib.sha1(script.encode()).hexdigest()
    replies: list[Any] = []
    for attempt in range(2):
        async with client.pipeline(transaction=False) as pipe:
            for key, argv in calls:
                pipe.execute_command("EVALSHA", sha, 1, key, *argv)
            replies = await pipe.execute(raise_on_error=False)
        if attempt == 0 and any(isinstance(reply, NoScriptError) for reply in replies):
            await client.script_load(script)
            continue
        break
    _raise_errors(replies)
    return replies


async def read_users(client: RedisCluster, script: str, user_vectors: KeyPattern,
                     fixed: Sequence[str], user_ids: Sequence[str]) -> list[Any]:
    """The user read (contracts.online.READ_USERS_SCRIPT, its arguments before the ids
    `fixed`) of `user_ids`: one call per slot, each user's answer in the order asked."""
    groups = by_slot(client, [user_vectors.of(user_id) for user_id in user_ids])
    calls = [(user_vectors.of(user_ids[group[0]]), [*fixed, *(user_ids[n] for n in group)])
             for group in groups]
    answers: list[Any] = [None] * len(user_ids)
    for group, reply in zip(groups, await eval_routed(client, script, calls), strict=True):
        for position, answer in zip(group, reply, strict=True):
            answers[position] = answer
    return answers


async def read_social(client: RedisCluster, keys: RedisKeys, user_ids: Sequence[str],
                      weights: Mapping[int, float], limits: SocialReadLimits) -> list[Any]:
    """What contracts.social.READ_SOCIAL_SCRIPT answers for each of `user_ids` on a single
    Redis (``[feed, hot, flags]``), read in at most three steps: each user's own keys (the
    script, reading no hot followee; with their edges and the size of the hot set), which
    of the followees are hot, and the newest acts of the first ``limits.hot_followees``
    of them (in the order of the user's ``following`` hash, as the script picks them)."""
    own = SocialReadLimits(feed=limits.feed, hot_followees=0, per_type=limits.per_type)
    calls = [(keys.following(user_id), read_social_args(keys, user_id, weights, own))
             for user_id in user_ids]
    hot_read = limits.hot_followees > 0 and limits.per_type > 0 and bool(weights)

    async def edges() -> tuple[list[dict[bytes, bytes]], int]:
        if not hot_read:
            return [{} for _ in user_ids], 0
        async with client.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.hgetall(keys.following(user_id))
            pipe.scard(keys.hot())
            *following, hot_count = await pipe.execute(raise_on_error=False)
        _raise_errors([*following, hot_count])
        return following, int(hot_count)

    replies, (following, hot_count) = await asyncio.gather(
        eval_routed(client, READ_SOCIAL_SCRIPT, calls), edges())
    answers = [[list(feed), [], list(flags)] for feed, _, flags in replies]
    if not hot_count:
        return answers
    hot = await _hot_of(client, keys.hot(), following)
    picked = [[f for f in edges_of if f in hot][:limits.hot_followees] for edges_of in following]
    acts = await _acts_of(client, keys, list(dict.fromkeys(f for fs in picked for f in fs)),
                          sorted(weights), limits.per_type)
    for answer, chosen, edges_of in zip(answers, picked, following, strict=True):
        feed, hot_acts, flags = answer
        noted = set(flags[::2])
        for followee in chosen:
            for event_type, pairs in acts[followee]:
                for item_id, score in pairs:
                    hot_acts += [followee, str(event_type), item_id, score]
            if followee not in noted:
                flags += [followee, edges_of[followee]]
    return answers


async def _hot_of(client: RedisCluster, hot_key: str,
                  following: Sequence[Mapping[bytes, bytes]]) -> set[bytes]:
    """Which of every user's followees are in the hot set (one key: one node)."""
    followees = list(dict.fromkeys(f for edges_of in following for f in edges_of))
    if not followees:
        return set()
    chunks = [followees[n:n + SMISMEMBER_CHUNK] for n in range(0, len(followees), SMISMEMBER_CHUNK)]
    async with client.pipeline(transaction=False) as pipe:
        for chunk in chunks:
            pipe.smismember(hot_key, chunk)
        replies = await pipe.execute(raise_on_error=False)
    _raise_errors(replies)
    return {f for chunk, member in zip(chunks, replies, strict=True)
            for f, yes in zip(chunk, member, strict=True) if yes}


async def _acts_of(client: RedisCluster, keys: RedisKeys, followees: Sequence[bytes],
                   event_types: Sequence[int], per_type: int,
                   ) -> dict[bytes, list[tuple[int, list[tuple[bytes, float]]]]]:
    """Each followee's `per_type` newest acts of each of `event_types` (in that order),
    newest first. The keys are built from the followee's bytes as the script builds them."""
    if not followees:
        return {}
    patterns = [keys.acts_sets[t] for t in event_types]
    async with client.pipeline(transaction=False) as pipe:
        for followee in followees:
            for pattern in patterns:
                pipe.zrevrange(pattern.head.encode() + followee + pattern.tail.encode(),
                               0, per_type - 1, withscores=True)
        replies = await pipe.execute(raise_on_error=False)
    _raise_errors(replies)
    per = len(event_types)
    return {followee: list(zip(event_types, replies[n * per:(n + 1) * per], strict=True))
            for n, followee in enumerate(followees)}
