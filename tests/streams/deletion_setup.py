"""A deleted user's world for the deletion tests: their social graph and their followers'
feeds in Redis as the social worker writes them (contracts.social), the control record
serving's DeleteUser writes, and what the worker must have left of them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis
from streams_harness import Running, committed_records, publish_items

from contracts.deletions import control_headers
from contracts.online import EVENT_TYPES, RedisKeys
from contracts.relations import edge_key
from contracts.social import EdgeFlags, feed_member
from protos import events_pb2

FOLLOW, FRIEND = events_pb2.FOLLOW, events_pb2.FRIEND


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def event(user: str, item: str, event_id: str, kind: int = events_pb2.CLICK) -> bytes:
    return events_pb2.Event(event_id=event_id, user_id=user, item_id=item,
                            type=kind, timestamp_ms=now_ms()).SerializeToString()  # type: ignore[arg-type]


def deletion(user: str) -> bytes:
    return events_pb2.UserDeletion(user_id=user, requested_at_ms=now_ms(),
                                   requested_by="test").SerializeToString()


def send_control(running: Running, user: str, value: bytes | None = None,
                 key: bytes | None = None) -> tuple[int, int]:
    """The control record as DeleteUser writes it (`value`/`key` to spoil it)."""
    metadata = running.producer.send(
        running.worker.topics["events"], key=key if key is not None else user.encode(),
        value=value if value is not None else deletion(user), headers=control_headers(),
    ).get(30)
    return metadata.partition, metadata.offset


@dataclass
class Graph:
    """`user` follows `followee`; `follower` follows and befriends `user` and follows
    `followee`; `lookalike` (an id `user` is a prefix of) acted too."""

    user: str
    followee: str
    follower: str
    lookalike: str

    def write(self, client: redis.Redis, keys: RedisKeys) -> None:
        follow = EdgeFlags().with_edge(FOLLOW, share_name=False)
        both = follow.with_edge(FRIEND, share_name=True)
        client.hset(keys.following(self.user), self.followee, follow.encode())
        client.hset(keys.followers(self.followee), mapping={self.user: follow.encode(),
                                                            self.follower: follow.encode()})
        client.hset(keys.followers(self.user), self.follower, both.encode())
        client.hset(keys.following(self.follower), mapping={self.user: both.encode(),
                                                            self.followee: follow.encode()})
        client.zadd(keys.social(self.follower), {
            feed_member(self.user, events_pb2.PURCHASE, "i1"): 3.0,
            feed_member(self.user, events_pb2.VIEW, "i2"): 1.0,
            feed_member(self.followee, events_pb2.VIEW, "i2"): 2.0,
            feed_member(self.lookalike, events_pb2.VIEW, "i3"): 2.5,
        })
        client.zadd(keys.social(self.user), {feed_member(self.followee, events_pb2.VIEW, "i2"): 2.0})
        client.sadd(keys.hot(), self.user, self.followee)

    def tombstone_keys(self) -> set[bytes]:
        return {edge_key(self.user, self.followee, FOLLOW).encode(),
                edge_key(self.follower, self.user, FOLLOW).encode(),
                edge_key(self.follower, self.user, FRIEND).encode()}


def user_keys(keys: RedisKeys, user: str) -> list[str]:
    """Every key of the user's own online state."""
    acts = [keys.acts_sets[n].of(user) for n in keys.acts_sets]
    assert len(acts) == len(EVENT_TYPES)
    return [keys.user_vector(user), keys.seen(user), keys.following(user),
            keys.followers(user), keys.social(user), *acts]


def assert_gone_from_redis(client: redis.Redis, keys: RedisKeys, graph: Graph) -> None:
    """Nothing of the user is left in Redis; everyone else's is as it was."""
    assert client.exists(*user_keys(keys, graph.user)) == 0
    assert not client.sismember(keys.hot(), graph.user)
    assert client.sismember(keys.hot(), graph.followee)
    assert set(client.hkeys(keys.followers(graph.followee))) == {graph.follower.encode()}
    assert set(client.hkeys(keys.following(graph.follower))) == {graph.followee.encode()}
    assert set(client.zrange(keys.social(graph.follower), 0, -1)) == {
        feed_member(graph.followee, events_pb2.VIEW, "i2").encode(),
        feed_member(graph.lookalike, events_pb2.VIEW, "i3").encode(),
    }


def relation_records(running: Running) -> list[tuple[bytes, bytes | None]]:
    return committed_records(running.producer.config["bootstrap_servers"],
                             running.worker.topics["relations"])


def changelog_of(running: Running, user: str) -> list[bytes | None]:
    """The committed values of `user`'s key on the users changelog, in order."""
    topic = f"{running.worker.env['STREAMREC_STREAMS_APP_ID']}-users-changelog"
    return [value for key, value in committed_records(
        running.producer.config["bootstrap_servers"], topic) if key == user.encode()]


def prepare(running: Running, name: str) -> tuple[list[str], RedisKeys, Graph]:
    """Two items with vectors, and a fresh user's graph written to Redis; ids tagged
    ``{name}-{random}`` (the tag of streams_harness.outputs)."""
    tag = f"{name}-{uuid.uuid4().hex[:6]}"
    items = publish_items(running, tag, 2)
    keys = RedisKeys(running.worker.redis_prefix)
    graph = Graph(user=f"{tag}-u", followee=f"{tag}-g", follower=f"{tag}-f", lookalike=f"{tag}-ux")
    graph.write(running.redis, keys)
    return items, keys, graph


def wait_until(check: Callable[[], bool], running: Running, what: str,
               timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        running.worker.check_alive()
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s\n{running.worker.log_tail()}"
        time.sleep(0.05)


def receipts(running: Running, keys: RedisKeys) -> int:
    """Deletion receipts held in Redis for the worker's group."""
    return int(running.redis.hlen(keys.deleting(running.worker.env["STREAMREC_STREAMS_APP_ID"])))


def seen_items(client: redis.Redis, keys: RedisKeys, user: str) -> list[str]:
    """The user's ``seen`` set, oldest first."""
    return [member.decode() for member in client.zrange(keys.seen(user), 0, -1)]  # type: ignore[union-attr]
