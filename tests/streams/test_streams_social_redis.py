"""The social graph and the fan-out against the real Redis, through streams.online: edges
and their flags, hot accounts with their hysteresis, acts in followers' feeds, each
record's effects applied once."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from contracts.online import RedisKeys
from contracts.social import DEFAULT_TYPE_WEIGHTS, EdgeFlags, feed_member, feed_score, \
    type_weights
from protos import events_pb2
from streams.fanout import Fanout, FanoutCounts
from streams.graph import EdgeChange
from contracts.security import async_redis_client
from streams.online import AppliedOffsets, Caps, OnlineState, Touch
from streams.trending import Window

pytestmark = pytest.mark.integration

TAU_MS = 3_600_000.0
FOLLOW, FRIEND = events_pb2.FOLLOW, events_pb2.FRIEND
_offsets = itertools.count()


def edge(follower: str, followee: str, kind: int = FOLLOW, *, present: bool = True,
         share_name: bool = False, offset: int | None = None) -> EdgeChange:
    return EdgeChange(follower, followee, kind, present, share_name, 0,
                      next(_offsets) if offset is None else offset)


def act(user: str, item: str, ts: int, kind: int = events_pb2.PURCHASE) -> Touch:
    return Touch(user, item, ts, 1.0, kind, 0, next(_offsets))


class Social:
    """An OnlineState with fan-out, the counts it reported, and the graph's applied offsets."""

    def __init__(self, client: Redis, keys: RedisKeys, cap: int = 3, backfill: int = 2,
                 ttl_s: int = 0) -> None:
        self.client, self.keys = client, keys
        self.counts: list[FanoutCounts] = []
        self.online = OnlineState(
            client, keys=keys, caps=Caps(seen=10, acts=10, purchases=10, trending=10),
            trending=(Window("1h", TAU_MS),), group="g", source_topic="ev",
            retry_initial_s=0.01, retry_max_s=0.1,
            fanout=Fanout(weights=type_weights(DEFAULT_TYPE_WEIGHTS), tau_ms=TAU_MS, cap=cap,
                          backfill=backfill, ttl_s=ttl_s),
            on_fanout=self.counts.append,
        )
        self.applied = AppliedOffsets(keys.applied("g-relations"), "rel", "g-relations")

    async def relate(self, *changes: EdgeChange, threshold: int = 3) -> int:
        applied, _ = await self.online.write_relations(changes, applied=self.applied,
                                                       fanout_threshold=threshold)
        return applied

    async def flags(self, follower: str, followee: str) -> tuple[EdgeFlags, EdgeFlags]:
        following = await self.client.hget(self.keys.following(follower), followee)
        followers = await self.client.hget(self.keys.followers(followee), follower)
        return EdgeFlags.decode(following), EdgeFlags.decode(followers)

    async def feed(self, user: str) -> dict[str, float]:
        pairs: list[tuple[bytes, float]]
        pairs = await self.client.zrange(  # type: ignore[assignment]
            self.keys.social(user), 0, -1, withscores=True)
        return {member.decode(): score for member, score in pairs}

    async def hot(self) -> set[str]:
        members: set[bytes]
        members = await self.client.smembers(self.keys.hot())  # type: ignore[assignment,misc]
        return {m.decode() for m in members}


async def _drop(client: Redis, keys: RedisKeys) -> None:
    names = [name async for name in client.scan_iter(match=f"{keys.prefix}*", count=1000)]
    for name in names:  # one by one: a cluster's keys lie in many slots
        await client.delete(name)
    await client.aclose()


@pytest.fixture
async def social(online_redis_url: str, unique: str) -> AsyncIterator[Social]:
    """On the single Redis, then on the cluster."""
    client = async_redis_client(online_redis_url, None)
    keys = RedisKeys(f"test-{unique}:")
    yield Social(client, keys)
    await _drop(client, keys)


async def test_edges_of_two_kinds_keep_each_other_and_go_with_their_last_kind(
    social: Social,
) -> None:
    await social.relate(edge("ada", "bob", FOLLOW, share_name=True), edge("ada", "bob", FRIEND))
    following, followers = await social.flags("ada", "bob")
    assert following == followers == EdgeFlags(kinds=0b11, named=0b01)
    assert following.may_name
    await social.relate(edge("ada", "bob", FOLLOW, present=False))
    following, followers = await social.flags("ada", "bob")
    assert following == followers == EdgeFlags(kinds=0b10, named=0)
    assert not following.may_name
    await social.relate(edge("ada", "bob", FRIEND, share_name=True))
    assert (await social.flags("ada", "bob"))[0] == EdgeFlags(kinds=0b10, named=0b10)
    await social.relate(edge("ada", "bob", FRIEND, present=False))
    assert not await social.client.exists(social.keys.following("ada"),
                                          social.keys.followers("bob"))


async def test_each_change_applies_once(social: Social) -> None:
    assert await social.relate(edge("ada", "bob", offset=10), edge("ada", "bob", present=False,
                                                                   offset=11)) == 2
    # Read again after a crash (the add, then the removal): nothing changes twice.
    assert await social.relate(edge("ada", "bob", offset=10)) == 0
    assert await social.client.hlen(social.keys.following("ada")) == 0
    assert await social.relate(edge("ada", "cy", offset=12)) == 1


async def test_an_account_is_hot_above_the_threshold_until_it_drops_to_nine_tenths(
    social: Social,
) -> None:
    # threshold 20: hot with 21 followers, still hot with 19, not at 18.
    await social.relate(*(edge(f"f{k}", "star") for k in range(21)), threshold=20)
    assert await social.hot() == {"star"}
    await social.relate(*(edge(f"f{k}", "star", present=False) for k in range(2)), threshold=20)
    assert await social.hot() == {"star"}
    await social.relate(edge("f2", "star", present=False), threshold=20)
    assert await social.hot() == set()
    await social.relate(edge("f2", "star"), threshold=20)
    assert await social.hot() == set()  # 19: not above the threshold again


async def test_acts_land_in_followers_feeds_capped_and_hot_accounts_are_skipped(
    social: Social,
) -> None:
    await social.relate(edge("ada", "bob"), edge("cy", "bob"), edge("ada", "star"),
                        *(edge(f"f{k}", "star") for k in range(3)), threshold=3)
    assert await social.hot() == {"star"}
    await social.online.write([
        act("bob", "i1", 1_000), act("bob", "i1", 5_000), act("bob", "i2", 2_000,
                                                                events_pb2.VIEW),
        act("bob", "i3", 3_000, events_pb2.CLICK),  # clicks carry no social weight
        act("star", "i9", 4_000),
    ], [])
    expected = {
        feed_member("bob", events_pb2.PURCHASE, "i1"): feed_score(3.0, 5_000, TAU_MS),
        feed_member("bob", events_pb2.VIEW, "i2"): feed_score(0.25, 2_000, TAU_MS),
    }
    assert await social.feed("ada") == pytest.approx(expected)
    assert await social.feed("cy") == pytest.approx(expected)
    assert not await social.client.exists(social.keys.social("f0"))
    assert social.counts == [FanoutCounts(writes=4, skipped=1)]

    # Capped to the 3 highest; an act keeps its newest time (ZADD GT).
    await social.online.write([act("bob", "i4", 6_000), act("bob", "i5", 7_000),
                               act("bob", "i1", 500)], [])
    feed = await social.feed("ada")
    assert set(feed) == {feed_member("bob", events_pb2.PURCHASE, i) for i in ("i1", "i4", "i5")}
    assert feed[feed_member("bob", events_pb2.PURCHASE, "i1")] == pytest.approx(
        feed_score(3.0, 5_000, TAU_MS))


async def test_an_unfollow_drops_the_followees_acts_from_the_feed(social: Social) -> None:
    await social.relate(edge("ada", "bob"), edge("ada", "cy"))
    await social.online.write([act("bob", "i1", 1_000), act("cy", "i2", 1_000)], [])
    await social.relate(edge("ada", "bob", present=False))
    assert list(await social.feed("ada")) == [feed_member("cy", events_pb2.PURCHASE, "i2")]


async def test_a_new_follow_copies_the_followees_newest_acts_unless_it_is_hot(
    social: Social,
) -> None:
    # bob's acts before anyone follows him: three purchases, a view, a click; star is hot.
    await social.relate(*(edge(f"f{k}", "star") for k in range(4)), threshold=3)
    await social.online.write([act("bob", "i1", 1_000), act("bob", "i|2", 3_000),
                               act("bob", "i3", 2_000), act("bob", "i4", 500, events_pb2.VIEW),
                               act("bob", "i5", 4_000, events_pb2.CLICK),
                               act("star", "i9", 1_000)], [])
    await social.relate(edge("ada", "bob"), edge("ada", "star"), threshold=3)
    # The two newest purchases and the view (backfill 2 per type), capped to 3; no click.
    assert await social.feed("ada") == pytest.approx({
        feed_member("bob", events_pb2.PURCHASE, "i|2"): feed_score(3.0, 3_000, TAU_MS),
        feed_member("bob", events_pb2.PURCHASE, "i3"): feed_score(3.0, 2_000, TAU_MS),
        feed_member("bob", events_pb2.VIEW, "i4"): feed_score(0.25, 500, TAU_MS),
    })
    # A second kind of edge to someone already followed copies nothing again.
    await social.client.delete(social.keys.social("ada"))
    await social.relate(edge("ada", "bob", FRIEND), threshold=3)
    assert await social.feed("ada") == {}


async def test_feeds_the_fan_out_creates_expire_and_keep_their_owners_clock(
    online_redis_url: str, unique: str,
) -> None:
    client = async_redis_client(online_redis_url, None)
    keys = RedisKeys(f"test-{unique}:")
    social = Social(client, keys, ttl_s=1000)
    try:
        await social.relate(edge("ada", "bob"))
        await social.online.write([act("bob", "i1", 1_000)], [])
        assert 990 < await client.ttl(keys.social("ada")) <= 1000
        await client.expire(keys.social("ada"), 50)  # as if ada's own last act set it
        await social.online.write([act("bob", "i2", 2_000)], [])
        assert await client.ttl(keys.social("ada")) <= 50  # bob's acts keep no feed alive
        await social.relate(edge("cy", "bob"))  # a new follow's backfill
        assert 990 < await client.ttl(keys.social("cy")) <= 1000
    finally:
        await _drop(client, keys)


async def test_a_deletion_takes_the_users_edges_and_acts_out_of_the_graph_once(
    social: Social,
) -> None:
    # ada follows bob, bob follows cy; bob's purchase is in ada's feed
    await social.relate(edge("ada", "bob"), edge("bob", "cy", FRIEND))
    await social.online.write([act("bob", "i1", 1_000)], [])
    assert await social.feed("ada")
    removed = await social.online.delete_user("bob", partition=0, offset=10_000)
    assert removed.now
    assert set(removed.following) == {"cy"} and set(removed.followers) == {"ada"}
    for key in (social.keys.following("bob"), social.keys.followers("bob"),
                social.keys.social("bob"), social.keys.acts(events_pb2.PURCHASE, "bob")):
        assert not await social.client.exists(key), key
    # the tombstones the deletion sends (streams.deletion), applied as any removal: on a
    # cluster they take the other side of each edge; on one Redis it went with the user
    await social.relate(edge("ada", "bob", present=False),
                        edge("bob", "cy", FRIEND, present=False))
    assert await social.client.hget(social.keys.following("ada"), "bob") is None
    assert await social.client.hget(social.keys.followers("cy"), "bob") is None
    assert await social.feed("ada") == {}
    assert "bob" not in await social.hot()
    # read again after a crash: nothing removed now, the same edges from the receipt
    again = await social.online.delete_user("bob", partition=0, offset=10_000)
    assert not again.now and (again.following, again.followers) == (
        removed.following, removed.followers)
    assert await social.online.forget_receipts({0: 10_001}) == 1
    assert (await social.online.delete_user("bob", partition=0, offset=10_000)).edges == 0
