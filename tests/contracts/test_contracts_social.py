"""The social graph and feed contract: edge flags, feed members and scores, fusion, and
the social read script against the real Redis."""

from __future__ import annotations

import math

import pytest
from redis.asyncio import Redis

from contracts.online import RedisKeys
from contracts.social import (
    READ_SOCIAL_SCRIPT,
    Act,
    EdgeFlags,
    FeedFormatError,
    SocialReadLimits,
    decayed_log_weight,
    decayed_weight,
    feed_member,
    feed_score,
    fuse,
    parse_member,
    parse_social_reply,
    read_social_args,
    social_items,
    type_weights,
)
from protos import events_pb2

TAU_MS = 1000.0 * 3600


def test_edge_flags_keep_each_kind_and_its_name_permission() -> None:
    flags = EdgeFlags().with_edge(events_pb2.FOLLOW, share_name=False)
    assert flags.related and not flags.may_name
    flags = flags.with_edge(events_pb2.FRIEND, share_name=True)
    assert flags.may_name
    assert EdgeFlags.decode(flags.encode()) == flags
    assert EdgeFlags.decode(str(flags.encode()).encode()) == flags
    only_follow = flags.without_edge(events_pb2.FRIEND)
    assert only_follow.related and not only_follow.may_name
    assert not only_follow.without_edge(events_pb2.FOLLOW).related
    assert EdgeFlags.decode(None) == EdgeFlags()
    with pytest.raises(ValueError):
        EdgeFlags().with_edge(0, share_name=False)


def test_feed_members_round_trip_any_ids() -> None:
    member = feed_member("a|b%c", events_pb2.PURCHASE, "item|1")
    assert member.count("|") == 2
    assert parse_member(member) == ("a|b%c", events_pb2.PURCHASE, "item|1")
    assert parse_member(member.encode()) == ("a|b%c", events_pb2.PURCHASE, "item|1")
    for bad in ("a|b", "a|x|c", "a|1|c|d"):
        with pytest.raises(FeedFormatError):
            parse_member(bad)


def test_feed_scores_order_by_decayed_weight_at_any_time() -> None:
    heavy_old = feed_score(3.0, 0.0, TAU_MS)
    light_new = feed_score(1.0, 2 * TAU_MS, TAU_MS)
    for now in (2 * TAU_MS, 10 * TAU_MS):
        assert (decayed_weight(light_new, now, TAU_MS) > decayed_weight(heavy_old, now, TAU_MS)) \
            == (light_new > heavy_old)
    assert decayed_weight(feed_score(2.0, 5.0, TAU_MS), 5.0, TAU_MS) == pytest.approx(2.0)
    assert decayed_weight(feed_score(2.0, 0.0, TAU_MS), TAU_MS, TAU_MS) == pytest.approx(
        2.0 / math.e)
    with pytest.raises(ValueError):
        feed_score(0.0, 1.0, TAU_MS)


def test_acts_years_old_keep_their_order() -> None:
    """A replay of old events: every weight is below a float's range, the order is not."""
    now = 10_000 * TAU_MS
    acts = [Act("a", events_pb2.VIEW, "old", decayed_log_weight(feed_score(1.0, 0.0, TAU_MS),
                                                                  now, TAU_MS)),
            Act("a", events_pb2.PURCHASE, "older", decayed_log_weight(
                feed_score(3.0, -2 * TAU_MS, TAU_MS), now, TAU_MS)),
            Act("b", events_pb2.VIEW, "old", decayed_log_weight(feed_score(1.0, 0.0, TAU_MS),
                                                                now, TAU_MS))]
    assert decayed_weight(feed_score(1.0, 0.0, TAU_MS), now, TAU_MS) == 0.0
    items = social_items(acts, {})
    assert [i.item_id for i in items] == ["old", "older"]
    assert items[0].log_score == pytest.approx(math.log(2.0) - 10_000)


def test_type_weights_name_known_types_with_positive_weights() -> None:
    assert type_weights({"purchase": 3.0}) == {events_pb2.PURCHASE: 3.0}
    with pytest.raises(ValueError, match="unknown"):
        type_weights({"like": 1.0})
    with pytest.raises(ValueError, match="positive"):
        type_weights({"view": 0.0})


def test_social_items_count_people_and_name_only_those_allowed() -> None:
    log = math.log
    acts = [Act("ann", events_pb2.PURCHASE, "x", log(3.0)),
            Act("bob", events_pb2.VIEW, "x", log(0.2)),
            Act("bob", events_pb2.PURCHASE, "x", log(2.0)), Act("cy", events_pb2.VIEW, "y", log(0.5))]
    items = social_items(acts, {"bob": True})
    assert [i.item_id for i in items] == ["x", "y"]
    x = items[0]
    assert x.score == pytest.approx(5.2) and x.count == 2
    assert x.strongest == events_pb2.PURCHASE and x.actors[events_pb2.PURCHASE] == ["ann", "bob"]
    assert x.named == ["bob"] and items[1].named == []


def test_fusion_adds_the_social_ranking_by_rank() -> None:
    assert [i for i, _ in fuse(["a", "b", "c"], [], 1.0)] == ["a", "b", "c"]
    assert [i for i, _ in fuse(["a", "b", "c"], ["c"], 0.0)] == ["a", "b", "c"]
    fused = dict(fuse(["a", "b", "c"], ["c", "z"], 1.0))
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["z"] == pytest.approx(1 / 62)
    assert max(fused, key=fused.__getitem__) == "c"


@pytest.mark.integration
async def test_the_social_read_keeps_followed_actors_and_reads_hot_accounts(
        redis: Redis, unique: str) -> None:
    keys = RedisKeys(f"{unique}:")
    user, now = "u|1", 10 * TAU_MS
    named = EdgeFlags().with_edge(events_pb2.FOLLOW, share_name=True).encode()
    counted = EdgeFlags().with_edge(events_pb2.FOLLOW, share_name=False).encode()
    try:
        await redis.hset(keys.following(user), mapping={"ann": named, "bob|x": counted,
                                                         "star": counted})
        await redis.zadd(keys.social(user), {
            feed_member("ann", events_pb2.PURCHASE, "i1"): feed_score(3.0, now, TAU_MS),
            feed_member("bob|x", events_pb2.VIEW, "i2"): feed_score(0.25, now, TAU_MS),
            feed_member("gone", events_pb2.PURCHASE, "i3"): feed_score(3.0, now, TAU_MS),
            "junk": 1.0,
        })
        await redis.sadd(keys.hot(), "star", "someone-else")
        await redis.zadd(keys.acts(events_pb2.PURCHASE, "star"), {"i1": now, "i4": now - TAU_MS})
        await redis.zadd(keys.acts(events_pb2.CLICK, "star"), {"i5": now})
        weights = type_weights({"purchase": 3.0, "view": 0.25})
        args = read_social_args(keys, user, weights, SocialReadLimits())
        reply = await redis.eval(READ_SOCIAL_SCRIPT, 0, *args)  # type: ignore[misc]
        acts, may_name = parse_social_reply(reply, now_ms=now, tau_ms=TAU_MS, weights=weights)
        assert may_name == {"ann": True, "bob|x": False, "star": False}
        found = {(a.actor_id, a.event_type, a.item_id): a.weight for a in acts}
        assert all(math.isfinite(a.log_weight) for a in acts)
        assert found == pytest.approx({
            ("ann", events_pb2.PURCHASE, "i1"): 3.0, ("bob|x", events_pb2.VIEW, "i2"): 0.25,
            ("star", events_pb2.PURCHASE, "i1"): 3.0,
            ("star", events_pb2.PURCHASE, "i4"): 3.0 / math.e,
        })
        items = social_items(acts, may_name)
        assert items[0].item_id == "i1" and items[0].count == 2 and items[0].named == ["ann"]
        # An account that became hot: its older act in the feed is not counted twice.
        await redis.zadd(keys.social(user), {
            feed_member("star", events_pb2.PURCHASE, "i4"): feed_score(3.0, now - TAU_MS, TAU_MS)})
        reply = await redis.eval(READ_SOCIAL_SCRIPT, 0, *args)  # type: ignore[misc]
        again, _ = parse_social_reply(reply, now_ms=now, tau_ms=TAU_MS, weights=weights)
        assert sorted((a.actor_id, a.item_id, a.weight) for a in again) == sorted(
            (a.actor_id, a.item_id, a.weight) for a in acts)
        # nobody followed: nothing, whatever the feed holds
        await redis.delete(keys.following(user))
        reply = await redis.eval(READ_SOCIAL_SCRIPT, 0, *args)  # type: ignore[misc]
        assert parse_social_reply(reply, now_ms=now, tau_ms=TAU_MS, weights=weights) == ([], {})
    finally:
        found_keys = [key async for key in redis.scan_iter(match=f"{unique}:*")]
        if found_keys:
            await redis.delete(*found_keys)
