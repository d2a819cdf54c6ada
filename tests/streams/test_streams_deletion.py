"""A user's deletion through the real worker, Kafka and Redis: the control record removes
the user's online state, their acts from their followers' feeds and their edges
(tombstones on relations), drops the worker's state (a changelog tombstone), and the
same id coming back starts as a new user; asking twice changes nothing more; a malformed
control record is dead-lettered with its reason."""

from __future__ import annotations

import uuid

import pytest
from deletion_setup import (
    assert_gone_from_redis,
    changelog_of,
    event,
    prepare,
    receipts,
    relation_records,
    seen_items,
    send_control,
    user_keys,
    wait_until,
)
from streams_harness import Running, outputs

from contracts.deletions import BAD_CONTROL_RECORD
from protos import events_pb2
from streams.history import decode_state

pytestmark = pytest.mark.integration

# The graph in Redis is the test's own (deletion_setup.Graph); the edge tombstones the
# deletion makes are checked on the topic, not read back into the graph.
WORKER_ENV = {"STREAMREC_STREAMS_RELATIONS_ENABLED": "false"}


def test_a_deleted_user_is_gone_everywhere_and_comes_back_as_a_new_user(running: Running) -> None:
    items, keys, graph = prepare(running, "del")
    tag, client = graph.user.removesuffix("-u"), running.redis
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
    assert seen_items(client, keys, graph.user) == [items[1]]
    assert client.exists(keys.acts(events_pb2.PURCHASE, graph.user)) == 0

    # Asked twice: the new user's state goes too, nobody else's changes, no new edges.
    tombstones = len(relation_records(running))
    send_control(running, graph.user)
    wait_until(lambda: changelog_of(running, graph.user)[-1:] == [None], running,
               "the second deletion")
    assert client.exists(*user_keys(keys, graph.user)) == 0
    assert_gone_from_redis(client, keys, graph)
    assert len(relation_records(running)) == tombstones
    wait_until(lambda: receipts(running, keys) == 0, running,
               "the receipts dropped after their commit")


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
