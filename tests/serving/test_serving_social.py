"""The social candidate source: reasons and fusion as plain functions, then end to end
against a real server on port 0 with the social graph written to the real Redis the way
the streams worker writes it (contracts/social.py)."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import numpy as np
import pytest
from conftest import DIM, Client, Stack
from redis.asyncio import Redis
from redis.exceptions import NoScriptError
from serving_harness import exact_nearest, unit_rows

from contracts.online import RedisKeys
from contracts.social import (
    DEFAULT_SOCIAL_WEIGHT,
    DEFAULT_TAU_S,
    DEFAULT_TYPE_WEIGHTS,
    Act,
    EdgeFlags,
    SocialReadLimits,
    feed_member,
    feed_score,
    social_items,
)
from protos import events_pb2, recommender_pb2
from serving import social as social_module
from serving.cli import client as cli
from serving.ranking import Candidate
from serving.settings import ServingSettings
from serving.social import SocialGraph, SocialTuning, fused, social_proof, social_reason

PURCHASE, CART, RATING, VIEW = (events_pb2.PURCHASE, events_pb2.ADD_TO_CART, events_pb2.RATING,
                                events_pb2.VIEW)
N_ITEMS = 40
TAU_MS = DEFAULT_TAU_S * 1000


# The mechanics are checked at weight 1, where a social ranking interleaves with the
# model's (the default is lower: bench/README.md, "Social quality").
WEIGHT = 1.0

def _item(acts: list[tuple[str, int]], named: set[str]) -> Any:
    (item,) = social_items([Act(actor, kind, "x", 0.0) for actor, kind in acts],
                           {actor: actor in named for actor, _ in acts})
    return item


def test_reasons_name_the_strongest_act_and_only_those_who_may_be_named() -> None:
    three = _item([("a", PURCHASE), ("b", PURCHASE), ("c", PURCHASE)], set())
    assert social_reason(three) == "bought by 3 people you follow"
    assert social_proof(three) == "3 people you follow bought this"
    named = _item([("ann", PURCHASE), ("b", PURCHASE), ("c", PURCHASE)], {"ann"})
    assert social_reason(named) == "bought by ann and 2 more people you follow"
    assert social_proof(named) == "ann and 2 more people you follow bought this"
    assert social_reason(_item([("ann", RATING), ("bo", RATING)], {"ann", "bo"})) == \
        "rated by ann and bo"
    assert social_reason(_item([("ann", RATING), ("bo", RATING), ("cy", RATING)],
                               {"ann", "bo", "cy"})) == "rated by ann, bo and 1 more person you follow"
    # The strongest type anyone did, counted by who did it; a viewer is not a buyer.
    mixed = _item([("ann", VIEW), ("b", CART), ("c", VIEW)], {"ann"})
    assert social_reason(mixed) == "added to cart by 1 person you follow"
    assert social_proof(mixed) == "1 person you follow added this to their cart"
    assert (mixed.count, mixed.named) == (3, ["ann"])
    assert social_reason(_item([("ann", VIEW)], {"ann"})) == "viewed by ann"
    assert social_proof(_item([("ann", VIEW)], {"ann"})) == "ann viewed this"


def test_fusion_keeps_the_candidate_of_the_source_with_the_larger_share() -> None:
    personal = [Candidate(i, 0.9 - n / 10, f"similar to {i}") for n, i in enumerate("abcd")]
    social = [Candidate("z", 6.0, "bought by 2 people you follow"),
              Candidate("d", 3.0, "bought by 1 person you follow"),
              Candidate("a", 0.25, "viewed by 1 person you follow")]
    answer = fused(personal, social, 1.0)
    # a: 1/61 + 1/63; z: 1/61; b: 1/62; d: 1/64 + 1/62; c: 1/63
    assert [c.item_id for c in answer] == ["a", "d", "z", "b", "c"]
    by_id = {c.item_id: c for c in answer}
    assert by_id["a"] == personal[0]  # the model ranks it higher: its reason and score
    assert by_id["d"] == social[1]  # the people the user follows rank it higher
    assert fused(personal, social, 0.0) == personal  # weight 0: the model's ranking alone


def test_social_settings_default_to_the_contract_and_refuse_bad_weights() -> None:
    settings = ServingSettings()
    assert settings.social_weight == DEFAULT_SOCIAL_WEIGHT
    assert settings.social_tau_s == DEFAULT_TAU_S
    assert settings.social_type_weights == DEFAULT_TYPE_WEIGHTS
    limits = SocialReadLimits()
    assert (settings.social_feed_limit, settings.social_hot_followees, settings.social_per_type) \
        == (limits.feed, limits.hot_followees, limits.per_type)
    with pytest.raises(ValueError, match="social_type_weights: unknown event types"):
        ServingSettings(social_type_weights={"like": 1.0})
    with pytest.raises(ValueError, match="positive"):
        ServingSettings(social_type_weights={"view": -1.0})
    with pytest.raises(ValueError, match="social_type_weights is empty"):
        ServingSettings(social_type_weights={})
    assert ServingSettings(social_type_weights={}, social_weight=0).social_weight == 0


def test_social_type_weights_are_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_SERVING_SOCIAL_TYPE_WEIGHTS", '{"purchase": 2, "view": 0.5}')
    settings = ServingSettings()
    assert settings.social_type_weights == {"purchase": 2.0, "view": 0.5}
    assert ServingSettings(**settings.model_dump()).social_type_weights == settings.social_type_weights
    monkeypatch.setenv("STREAMREC_SERVING_SOCIAL_TYPE_WEIGHTS", "{purchase: 2}")
    with pytest.raises(ValueError, match="social_type_weights"):
        ServingSettings()


class Graph:
    """The social graph and feeds in Redis, written as the streams worker writes them."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.keys = RedisKeys(prefix)
        self.now = time.time() * 1000

    async def follow(self, user: str, *followees: str, named: bool = False) -> None:
        flags = EdgeFlags().with_edge(events_pb2.FOLLOW, share_name=named).encode()
        await self.redis.hset(self.keys.following(user), mapping=dict.fromkeys(followees, flags))

    async def fan_out(self, follower: str, actor: str, kind: int, item_id: str) -> None:
        """`actor`'s act in `follower`'s feed (fan-out on write)."""
        weight = DEFAULT_TYPE_WEIGHTS[events_pb2.EventType.Name(kind).lower()]
        await self.redis.zadd(self.keys.social(follower),
                              {feed_member(actor, kind, item_id): feed_score(weight, self.now, TAU_MS)})

    async def hot_act(self, actor: str, kind: int, item_id: str) -> None:
        """An act of an account read on demand (fan-in on read): only its own acts set."""
        await self.redis.sadd(self.keys.hot(), actor)
        await self.redis.zadd(self.keys.acts(kind, actor), {item_id: self.now})


def _vectors() -> dict[str, np.ndarray]:
    rows = unit_rows(np.random.default_rng(5), N_ITEMS, DIM)
    return {f"i{n:02d}": rows[n] for n in range(N_ITEMS)}


def _catalog(item_ids: list[str], unavailable: frozenset[str] = frozenset()) -> list[events_pb2.Item]:
    return [events_pb2.Item(
        item_id=item_id, title=f"Title {item_id}",
        categories=["Even" if int(item_id[1:]) % 2 == 0 else "Odd"],
        availability=events_pb2.OUT_OF_STOCK if item_id in unavailable else events_pb2.IN_STOCK,
    ) for item_id in item_ids]


def _query() -> np.ndarray:
    vector = np.random.default_rng(9).normal(size=DIM)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


async def _recommend(client: Client, user_id: str, k: int, **fields: Any
                     ) -> recommender_pb2.RecommendResponse:
    return await client.stub.Recommend(
        recommender_pb2.RecommendRequest(user_id=user_id, k=k, **fields), timeout=5)


def _ids(response: Any) -> list[str]:
    return [item.item_id for item in response.items]


def _said(response: Any) -> list[tuple[str, str, str, int]]:
    return [(i.item_id, i.reason, i.social_proof, i.social_count) for i in response.items]


def _items(response: Any) -> list[bytes]:
    return [item.SerializeToString() for item in response.items]


async def _shop(stack: Stack, unavailable: frozenset[str] = frozenset()
                ) -> tuple[dict[str, np.ndarray], list[str], list[str], Graph]:
    """The catalog, the query's nearest items (first) and farthest (first), and the graph
    of user `u`: ann (named) and bob bought far[0]; dan put far[1] in his cart, which ann
    viewed; someone `u` no longer follows bought far[2]; the hot account star bought
    far[3]; bob viewed near[0]."""
    vectors = _vectors()
    await stack.publish_vectors(vectors)
    await stack.publish_items(_catalog(list(vectors), unavailable))
    near = exact_nearest(vectors, _query(), N_ITEMS)
    far = near[::-1]
    graph = Graph(stack.redis, stack.prefix)
    await graph.follow("u", "ann", named=True)
    await graph.follow("u", "bob", "dan", "star")
    for actor, kind, item_id in [("ann", PURCHASE, far[0]), ("bob", PURCHASE, far[0]),
                                 ("dan", CART, far[1]), ("ann", VIEW, far[1]),
                                 ("gone", PURCHASE, far[2]), ("bob", VIEW, near[0])]:
        await graph.fan_out("u", actor, kind, item_id)
    await graph.hot_act("star", PURCHASE, far[3])
    await stack.set_user("u", _query())
    await stack.set_user("twin", _query())  # the same taste, nobody followed
    return vectors, near, far, graph


async def test_social_items_join_the_answer_with_reasons_and_names_when_shared(
    online_stack: Stack) -> None:
    stack = online_stack
    _, near, far, _ = await _shop(stack)
    async with stack.server(social_weight=WEIGHT) as client:
        answer = await _recommend(client, "u", 10)
        off = await _recommend(client, "u", 10, exclude_social=True)
        twin = await _recommend(client, "twin", 10)
    assert answer.strategy == "personal+social"
    # Rank fusion, weight 1: personal ranks and social ones (far0 6.0, far3 3.0, far1 1.25,
    # near0 0.25) interleave; near0, in both, is first.
    assert _ids(answer) == [near[0], far[0], near[1], far[3], near[2], far[1], *near[3:7]]
    by_id = {item.item_id: item for item in answer.items}
    bought = by_id[far[0]]
    assert bought.reason == "bought by ann and 1 more person you follow"
    assert bought.social_proof == "ann and 1 more person you follow bought this"
    assert (bought.social_count, list(bought.social_user_ids)) == (2, ["ann"])
    assert bought.score == pytest.approx(6.0, rel=1e-3) and bought.title == f"Title {far[0]}"
    hot = by_id[far[3]]  # fan-in: read from the hot account's own acts
    assert (hot.reason, hot.social_count, list(hot.social_user_ids)) == (
        "bought by 1 person you follow", 1, [])
    cart = by_id[far[1]]
    assert cart.reason == "added to cart by 1 person you follow"
    assert (cart.social_count, list(cart.social_user_ids)) == (2, ["ann"])
    # A personal item the people the user follows acted on keeps its reason, with proof.
    mine = by_id[near[0]]
    assert mine.reason.startswith("similar to") and mine.social_proof == "1 person you follow viewed this"
    assert not by_id[near[1]].social_proof and by_id[near[1]].social_count == 0
    assert far[2] not in by_id  # bought by someone no longer followed
    # Off per request: today's answer, as for the same taste without any social graph.
    assert off.strategy == twin.strategy == "personal"
    assert _items(off) == _items(twin) and _ids(off) == near[:10]


async def test_weight_zero_turns_the_source_off_and_a_failed_read_answers_without_it(
    online_stack: Stack, caplog: pytest.LogCaptureFixture,
) -> None:
    stack = online_stack
    await _shop(stack)
    await stack.set_user("broken", _query())
    await stack.redis.set(RedisKeys(stack.prefix).following("broken"), "not a hash")
    def reads(client: Client) -> float | None:
        registry = client.running.service.metrics.registry
        return registry.get_sample_value("streamrec_serving_social_read_seconds_count")

    async with stack.server(social_weight=0) as client:
        off = await _recommend(client, "u", 10)
        twin = await _recommend(client, "twin", 10)
        with caplog.at_level(logging.WARNING, logger="serving.social"):
            await _recommend(client, "broken", 10)
        assert reads(client) == 0  # off: nothing read at all
    assert (off.strategy, _items(off)) == ("personal", _items(twin))
    assert "social read" not in caplog.text
    async with stack.server(social_weight=WEIGHT) as client:
        await _recommend(client, "broken", 10, exclude_social=True)
        assert reads(client) == 0
        with caplog.at_level(logging.WARNING, logger="serving.social"):
            broken = await _recommend(client, "broken", 10)
        registry = client.running.service.metrics.registry
        errors = registry.get_sample_value("streamrec_serving_social_read_errors_total")
        assert reads(client) == 1
        await _recommend(client, "u", 10)
        shown = {kind: registry.get_sample_value("streamrec_serving_social_items_total",
                                                 {"method": "Recommend", "kind": kind})
                 for kind in ("result", "proof")}
    assert (broken.strategy, _items(broken)) == ("personal", _items(twin))
    assert "social read of 1 users failed (ResponseError: WRONGTYPE" in caplog.text
    assert errors == 1
    assert shown == {"result": 3.0, "proof": 4.0}


async def test_every_filter_exclusion_and_the_diversity_cap_apply_to_social_items(
    online_stack: Stack,
) -> None:
    stack = online_stack
    far = exact_nearest(_vectors(), _query(), N_ITEMS)[::-1]
    _, near, far, graph = await _shop(stack, unavailable=frozenset({far[1]}))
    await graph.fan_out("u", "ann", PURCHASE, "ghost")  # in no index and no catalog
    await stack.set_user("u", _query(), seen=[far[3]])
    async with stack.server(social_weight=WEIGHT) as client:
        plain = await _recommend(client, "u", 10)
        seen_too = await _recommend(client, "u", 10, include_seen=True)
        excluded = await _recommend(client, "u", 10, exclude_item_ids=[far[0]])
        even = await _recommend(client, "u", 10, include_categories=["even"])
        capped = await _recommend(client, "u", 4, max_per_category=1)
    social = {far[0], far[1], far[3], "ghost"}
    assert social & set(_ids(plain)) == {far[0]}  # seen, out of stock and unknown left out
    assert social & set(_ids(seen_too)) == {far[0], far[3]}
    assert not social & set(_ids(excluded)) and excluded.strategy == "personal+social"
    assert all(int(item_id[1:]) % 2 == 0 for item_id in _ids(even))
    assert (far[0] in _ids(even)) == (int(far[0][1:]) % 2 == 0)
    # One item per category (Even, Odd; nothing to backfill): near[0] comes first, then
    # far[0] (social rank 1 before personal rank 2) takes the other slot if it is free.
    categories = [item.categories[0] for item in capped.items]
    assert len(categories) == len(set(categories)) == 2 and _ids(capped)[0] == near[0]
    assert (far[0] in _ids(capped)) == (int(far[0][1:]) % 2 != int(near[0][1:]) % 2)


async def test_users_without_a_vector_get_social_items_before_popular_ones(
    online_stack: Stack) -> None:
    stack = online_stack
    vectors = _vectors()
    await stack.publish_vectors(vectors)
    await stack.set_popular({"p1": 50, "p2": 40, "p3": 30})
    graph = Graph(stack.redis, stack.prefix)
    await graph.follow("newbie", "ann", named=True)
    await graph.fan_out("newbie", "ann", RATING, "i07")
    await graph.follow("returning", "ann")
    await graph.fan_out("returning", "ann", RATING, "i07")
    await stack.set_user("returning", vectors["i01"], version="an-older-model", seen=["i01"])
    async with stack.server(social_weight=WEIGHT) as client:
        newbie = await _recommend(client, "newbie", 3)
        stranger = await _recommend(client, "stranger", 3)
        returning = await _recommend(client, "returning", 3)
    assert newbie.strategy == "popular+social" and stranger.strategy == "popular"
    assert returning.strategy == "recent_items+social" and "i07" in _ids(returning)
    assert _ids(newbie) == ["i07", "p1", "p2"] and _ids(stranger) == ["p1", "p2", "p3"]
    assert newbie.items[0].reason == "rated by ann"
    assert newbie.items[1].reason == "popular with other shoppers"


async def test_similar_items_carry_the_calling_users_social_proof(
    online_stack: Stack) -> None:
    stack = online_stack
    vectors, near, _, graph = await _shop(stack)
    similar = exact_nearest(vectors, vectors[near[5]], 6, {near[5]})
    for actor in ("bob", "dan"):
        await graph.fan_out("u", actor, PURCHASE, similar[2])
    async with stack.server(social_weight=WEIGHT) as client:
        mine = await client.stub.SimilarItems(recommender_pb2.SimilarItemsRequest(
            item_id=near[5], k=5, user_id="u"), timeout=5)
        anyone = await client.stub.SimilarItems(recommender_pb2.SimilarItemsRequest(
            item_id=near[5], k=5), timeout=5)
    assert _ids(mine) == _ids(anyone) == similar[:5]  # proof only: the order is the model's
    proof = mine.items[2]
    assert (proof.social_proof, proof.social_count, list(proof.social_user_ids)) == (
        "2 people you follow bought this", 2, [])
    assert proof.reason == "similar to this item"
    assert not any(item.social_proof for item in anyone.items)


async def test_recommend_batch_reads_the_social_graph_of_every_user_that_wants_it(
    online_stack: Stack,
) -> None:
    stack = online_stack
    _, _, far, _ = await _shop(stack)
    async with stack.server(social_weight=WEIGHT) as client:
        single = await _recommend(client, "u", 6)
        batch = await client.stub.RecommendBatch(recommender_pb2.RecommendBatchRequest(requests=[
            recommender_pb2.RecommendRequest(user_id="u", k=6),
            recommender_pb2.RecommendRequest(user_id="u", k=6, exclude_social=True),
            recommender_pb2.RecommendRequest(user_id="twin", k=6),
        ]), timeout=5)
    social, off, twin = batch.responses
    # the same answer (a social score decays by the millisecond: compared by what it says)
    assert social.strategy == "personal+social" and _said(social) == _said(single)
    assert far[0] in _ids(social)
    assert off.strategy == twin.strategy == "personal" and _items(off) == _items(twin)


async def test_a_script_redis_no_longer_holds_is_loaded_again(
    stack: Stack, monkeypatch: pytest.MonkeyPatch,
) -> None:
    graph = Graph(stack.redis, stack.prefix)
    await graph.follow("u", "ann")
    await graph.fan_out("u", "ann", PURCHASE, "i01")
    reader = SocialGraph(stack.redis, prefix=stack.prefix, tuning=SocialTuning())
    real = social_module.send_packed
    calls = 0

    async def lost_once(client: Redis, packed: bytes, count: int) -> list[Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return [NoScriptError("NOSCRIPT No matching script")] * count
        return await real(client, packed, count)

    monkeypatch.setattr(social_module, "send_packed", lost_once)
    first, nobody = await reader.read(["u", "nobody"])
    assert calls == 2 and [item.item_id for item in first.items] == ["i01"]
    assert nobody.items == []


async def test_the_client_prints_social_reasons_and_proof(
    stack: Stack, capsys: pytest.CaptureFixture[str],
) -> None:
    _, near, far, _ = await _shop(stack)
    async with stack.server(social_weight=WEIGHT) as client:
        target = f"127.0.0.1:{client.running.port}"
        assert await cli.run(cli._parser().parse_args(
            ["--target", target, "recommend", "--user", "u", "-k", "4"])) == 0
        social = capsys.readouterr().out
        assert await cli.run(cli._parser().parse_args(
            ["--target", target, "recommend", "--user", "u", "-k", "4", "--no-social"])) == 0
        off = capsys.readouterr().out
        assert await cli.run(cli._parser().parse_args(
            ["--target", target, "similar", "--item", near[1], "-k", "40", "--user", "u"])) == 0
        similar = capsys.readouterr().out
    assert "user u: personal+social" in social
    assert re.search(rf"{far[0]}  Title {far[0]}  \[(Even|Odd)\]  "
                     r"\(bought by ann and 1 more person you follow\)", social)
    assert "     ann and 1 more person you follow bought this  (2 acted; named: ann)" in social
    assert "     1 person you follow viewed this  (1 acted)" in social
    assert "user u: personal," in off and "follow" not in off
    assert "     ann and 1 more person you follow bought this  (2 acted; named: ann)" in similar
