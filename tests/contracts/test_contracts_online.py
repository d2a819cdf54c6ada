"""contracts.online: key names, event-type names, the vector and base-time formats, and
the user-read script against the real Redis with keys of another shape."""

from __future__ import annotations

import math

import numpy as np
import pytest
from redis.asyncio import Redis

from contracts.online import (
    EVENT_TYPE_NAMES,
    EVENT_TYPE_NUMBERS,
    EVENT_TYPES,
    READ_USERS_SCRIPT,
    KeyPattern,
    RedisKeys,
    VectorFormatError,
    decayed,
    decode_base_ms,
    decode_vector,
    encode_base_ms,
    encode_vector,
    read_users_args,
    slot_of,
    slot_tags,
)
from contracts.security import async_redis_client
from protos import events_pb2


def test_keys_are_spelled_as_the_contract_says() -> None:
    keys = RedisKeys("sr:")
    assert keys.user_vector("u1") == "sr:uv:{u1}"
    assert keys.seen("u1") == "sr:seen:{u1}"
    assert keys.acts(events_pb2.PURCHASE, "u1") == "sr:acts:purchase:{u1}"
    assert keys.acts(events_pb2.ADD_TO_CART, "u1") == "sr:acts:add_to_cart:{u1}"
    assert keys.social("u1") == "sr:social:{u1}"
    assert keys.following("u1") == "sr:following:{u1}"
    assert keys.followers("u1") == "sr:followers:{u1}"
    assert keys.popular() == "sr:popular"
    assert keys.trending("1h") == "sr:trending:{1h}"
    assert keys.trending_base("1h") == "sr:trending:{1h}:base"
    assert keys.applied("app") == "sr:applied:{app}"
    assert RedisKeys("").user_vector("ü:x") == "uv:{ü:x}"


def test_a_users_keys_share_one_cluster_slot() -> None:
    from redis.crc import key_slot

    keys = RedisKeys("sr:")
    for user in ("u1", "ü:x", "a}b", "{x"):  # (an empty id, which validation refuses, would not)
        user_keys = [keys.user_vector(user), keys.seen(user), keys.social(user),
                     keys.following(user), keys.followers(user),
                     *(keys.acts(n, user) for n in EVENT_TYPE_NAMES)]
        assert len({key_slot(k.encode()) for k in user_keys}) == 1, user
    with pytest.raises(KeyError):
        keys.acts(events_pb2.EVENT_TYPE_UNSPECIFIED, "u1")


def test_each_slot_has_a_tag_and_a_fence_in_it() -> None:
    from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

    tags = slot_tags()
    assert len(tags) == REDIS_CLUSTER_HASH_SLOTS
    assert all(key_slot(tag.encode()) == slot for slot, tag in enumerate(tags))
    keys = RedisKeys("sr:")
    assert keys.fence("app", 0) == f"sr:fence:{{{tags[0]}}}:app"
    assert all(slot_of(keys.fence("{odd}group", slot)) == slot for slot in (0, 777, 16383))


def test_event_type_names_are_the_proto_enum_lower_cased() -> None:
    assert EVENT_TYPES == ("view", "click", "add_to_cart", "purchase", "rating")
    for number, name in EVENT_TYPE_NAMES.items():
        assert events_pb2.EventType.Value(name.upper()) == number
    assert set(EVENT_TYPE_NAMES) == set(events_pb2.EventType.values()) - {0}
    assert EVENT_TYPE_NUMBERS["purchase"] == events_pb2.PURCHASE


def test_vectors_are_float32_little_endian_and_round_trip() -> None:
    data = encode_vector(np.array([1.0, -2.5], dtype=np.float64))
    assert data == np.array([1.0, -2.5], dtype="<f4").tobytes()
    assert len(data) == 8
    vector = decode_vector(data, dim=2)
    assert vector.dtype == np.float32
    np.testing.assert_array_equal(vector, [1.0, -2.5])
    assert not vector.flags.writeable  # a view of the reply: nothing may change it


@pytest.mark.parametrize("raw, reason", [
    (b"", "whole number"),
    (b"\x00\x00\x80?\x00", "whole number"),
    (np.array([1.0, np.nan], "<f4").tobytes(), "not finite"),
    (np.array([np.inf, 1.0], "<f4").tobytes(), "not finite"),
    (np.zeros(3, "<f4").tobytes(), "all zeros"),
])
def test_corrupt_or_unusable_vectors_are_rejected(raw: bytes, reason: str) -> None:
    with pytest.raises(VectorFormatError, match=reason):
        decode_vector(raw)


def test_a_vector_of_another_dimension_is_rejected_when_one_is_expected() -> None:
    data = encode_vector(np.ones(3))
    assert len(decode_vector(data)) == 3
    with pytest.raises(VectorFormatError, match="3 dimensions, not 4"):
        decode_vector(data, dim=4)


@pytest.mark.parametrize("shape", [(0,), (2, 2), ()])
def test_only_a_flat_non_empty_vector_is_encoded(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="1-D"):
        encode_vector(np.ones(shape))


def test_base_times_are_decimal_ms() -> None:
    assert encode_base_ms(1_790_000_000_123) == "1790000000123"
    assert decode_base_ms(b"1790000000123") == 1_790_000_000_123.0
    assert decode_base_ms("1.5e12") == 1.5e12
    for bad in (b"not-a-time", b"inf", b"nan"):
        with pytest.raises(ValueError):
            decode_base_ms(bad)


def test_a_base_ahead_of_the_clock_counts_as_now() -> None:
    assert decayed(2.0, 0.0, 1_000.0, 1_000.0) == pytest.approx(2 / math.e)
    assert decayed(2.0, 5_000.0, 1_000.0, 1_000.0) == 2.0


def test_read_arguments_carry_the_keys_around_the_user_id() -> None:
    keys = RedisKeys("p:")
    assert read_users_args(keys, seen_limit=5, types=("purchase", "view")) == [
        "p:uv:{", "}", "p:seen:{", "}", "5", "2", "p:acts:purchase:{", "}", "p:acts:view:{", "}",
    ]
    with pytest.raises(ValueError, match="unknown event types"):
        read_users_args(keys, seen_limit=5, types=("like",))


@pytest.mark.integration
async def test_the_user_read_spells_no_key_itself(redis: Redis, unique: str) -> None:
    """Keys of another shape than RedisKeys' (no hash tag, a suffix): the script follows
    the patterns it is given."""
    prefix = f"{unique}:"
    keys = RedisKeys(prefix)
    keys.user_vectors = KeyPattern(f"{prefix}uv:", ":x")
    keys.seen_sets = KeyPattern(f"{prefix}seen:", ":x")
    keys.acts_sets = {n: KeyPattern(f"{prefix}acts:{name}:", ":x")
                      for n, name in EVENT_TYPE_NAMES.items()}
    user = "u:1"
    try:
        await redis.hset(keys.user_vector(user), mapping={"vec": encode_vector(np.ones(2)),
                                                          "version": "v1"})
        await redis.zadd(keys.seen(user), {"a": 1, "b": 2})
        await redis.zadd(keys.acts(events_pb2.PURCHASE, user), {"p": 1})
        await redis.zadd(keys.acts(events_pb2.CLICK, user), {"c": 1})
        args = read_users_args(keys, seen_limit=1, types=("purchase", "click"))
        ((vec, version, seen, acts), (none_vec, none_version, none_seen, none_acts)) = (
            await redis.eval(READ_USERS_SCRIPT, 0, *args, user, "nobody")  # type: ignore[misc]
        )
        assert decode_vector(vec).tolist() == [1.0, 1.0] and version == b"v1"
        assert seen == [b"b"] and sorted(acts) == [b"c", b"p"]
        assert none_vec is None and none_version is None and none_seen == [] and none_acts == []
    finally:
        found = [key async for key in redis.scan_iter(match=f"{prefix}*")]
        if found:
            await redis.delete(*found)


@pytest.mark.integration
@pytest.mark.cluster
async def test_a_users_read_runs_in_the_users_slot_on_a_cluster(
    redis_cluster_url: str, unique: str,
) -> None:
    """On a Redis Cluster the read runs once per slot, routed by one of its users' keys:
    every key it builds from the patterns is in that slot."""
    keys = RedisKeys(f"{unique}:")
    client = async_redis_client(redis_cluster_url, None)
    users = ["u:1", "u:2"]
    try:
        for n, user in enumerate(users, 1):
            await client.hset(keys.user_vector(user), mapping={
                "vec": encode_vector(np.full(2, float(n))), "version": "v1"})
            await client.zadd(keys.seen(user), {f"s{n}": 1})
            await client.zadd(keys.acts(events_pb2.PURCHASE, user), {f"p{n}": 1})
        args = read_users_args(keys, seen_limit=5, types=("purchase",))
        for n, user in enumerate(users, 1):
            ((vec, version, seen, acts),) = await client.eval(  # type: ignore[misc]
                READ_USERS_SCRIPT, 1, keys.user_vector(user), *args, user)
            assert decode_vector(vec).tolist() == [n, n] and version == b"v1"
            assert seen == [f"s{n}".encode()] and acts == [f"p{n}".encode()]
    finally:
        async for key in client.scan_iter(match=f"{keys.prefix}*"):
            await client.delete(key)
        await client.aclose()
