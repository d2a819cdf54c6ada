"""A user's deletion through the real worker, Kafka and Redis: the control record removes
the user's online state, their acts from their followers' feeds and their edges
(tombstones on relations), drops the worker's state (a changelog tombstone), and the
same id coming back starts as a new user; asking twice changes nothing more; a malformed
control record is dead-lettered with its reason."""

from __future__ import annotations

import time
import uuid

import pytest
from deletion_setup import (
    Graph,
    assert_gone_from_redis,
    changelog_of,
    event,
    relation_records,
    send_control,
    user_keys,
)
from streams_harness import Running, outputs, publish_items

from contracts.deletions import BAD_CONTROL_RECORD
from contracts.online import RedisKeys
from protos import events_pb2
from streams.history import decode_state

pytestmark = pytest.mark.integration


def wait_until(check, running: Running, what: str, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        running.worker.check_alive()
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s\n{running.worker.log_tail()}"
        time.sleep(0.1)


def test_a_deleted_user_is_gone_everywhere_and_comes_back_as_a_new_user(running: Running) -> None:
    tag = f"del-{uuid.uuid4().hex[:6]}"
    items = publish_items(running, tag, 2)
    keys = RedisKeys(running.worker.redis_prefix)
    client = running.redis
    graph = Graph(user=f"{tag}-u", followee=f"{tag}-g", follower=f"{tag}-f", lookalike=f"{tag}-ux")
    graph.write(client, keys)
    running.send("events", graph.user, event(graph.user, items[0], "before-1"))
    running.send("events", graph.user, event(graph.user, items[1], "before-2",
                                             kind=events_pb2.PURCHASE))
    outputs(running, tag, enriched=2, dead=0)
    assert client.exists(keys.user_vector(graph.user), keys.seen(graph.user),
                         keys.acts(events_pb2.PURCHASE, graph.user)) == 3

    send_control(running, graph.user)
    wait_until(lambda: client.exists(*user_keys(keys, graph.user)) == 0, running,
               "the user's keys deleted")
    assert_gone_from_redis(client, keys, graph)
    wait_until(lambda: graph.tombstone_keys() <= {k for k, v in relation_records(running) if v is None},
               running, "the user's edges tombstoned")
    wait_until(lambda: changelog_of(running, graph.user)[-1:] == [None], running,
               "the user's state tombstoned")
    assert "deleted" in running.worker.log_since_start()

    # The same id again: a new user, whose history holds only what came after.
    running.send("events", graph.user, event(graph.user, items[1], "after-1"))
    enriched, _ = outputs(running, tag, enriched=3, dead=0)
    assert [e.event.event_id for e in enriched] == ["before-1", "before-2", "after-1"]
    wait_until(lambda: changelog_of(running, graph.user)[-1] is not None, running,
               "the new user's state")
    state = decode_state(changelog_of(running, graph.user)[-1])
    assert [i.item_id for i in state.history] == [items[1]]
    assert [m.decode() for m in client.zrange(keys.seen(graph.user), 0, -1)] == [items[1]]
    assert client.exists(keys.acts(events_pb2.PURCHASE, graph.user)) == 0

    # Asked twice: the new user's state goes too, nobody else's changes, no new edges.
    tombstones = len(relation_records(running))
    send_control(running, graph.user)
    wait_until(lambda: changelog_of(running, graph.user)[-1:] == [None], running,
               "the second deletion")
    assert client.exists(*user_keys(keys, graph.user)) == 0
    assert_gone_from_redis(client, keys, graph)
    assert len(relation_records(running)) == tombstones
    wait_until(lambda: client.hlen(keys.deleting(running.worker.env["STREAMREC_STREAMS_APP_ID"]))
               == 0, running, "the receipts dropped after their commit")


def test_a_malformed_control_record_is_dead_lettered_with_its_reason(running: Running) -> None:
    tag = f"bad-{uuid.uuid4().hex[:6]}"
    user = f"{tag}-u"
    sent = {send_control(running, user, value=b"\xff\xfenot a deletion"),
            send_control(running, user, key=f"{tag}-other".encode()),
            send_control(running, user, value=events_pb2.UserDeletion(user_id=user)
                         .SerializeToString())}  # no requested_at_ms

    def dead() -> bool:
        running.logs["dlq"].poll()
        return len(running.outcomes(sent)) == 3

    wait_until(dead, running, "dead letters")
    assert sorted(running.outcomes(sent).values()) == [[BAD_CONTROL_RECORD]] * 3
