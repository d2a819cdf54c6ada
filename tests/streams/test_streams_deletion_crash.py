"""A deletion interrupted by SIGKILL: the worker dies after the deletion's Redis half is
applied and before its Kafka transaction commits (a long commit interval holds it open).
After the restart the deletion completes, from its receipt: every edge tombstoned once,
the state tombstoned, and nothing applied twice (the event after the deletion keeps its
online state, the events before it are not brought back)."""

from __future__ import annotations

from collections import Counter

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
    wait_until,
)
from streams_harness import Running, committed_records, outputs

from protos import events_pb2

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COMMIT_INTERVAL_S = 20
WORKER_ENV = {
    "STREAMREC_STREAMS_COMMIT_INTERVAL_S": str(COMMIT_INTERVAL_S),
    "STREAMREC_STREAMS_TRANSACTION_TIMEOUT_S": str(COMMIT_INTERVAL_S * 3),
    # The graph in Redis is the test's own (deletion_setup.Graph); the edge tombstones the
    # deletion makes are checked on the topic, not read back into the graph.
    "STREAMREC_STREAMS_RELATIONS_ENABLED": "false",
}


def test_a_deletion_killed_before_its_commit_completes_after_the_restart(running: Running) -> None:
    items, keys, graph = prepare(running, "crash")
    tag, client = graph.user.removesuffix("-u"), running.redis
    bootstrap = running.producer.config["bootstrap_servers"]
    enriched_topic = running.worker.topics["enriched"]

    running.send("events", graph.user, event(graph.user, items[0], "before"))
    send_control(running, graph.user)
    running.send("events", graph.user, event(graph.user, items[1], "after"))
    # Redis is written before the transaction commits: the deletion and the event after
    # it are applied there while nothing of them is committed yet.
    wait_until(lambda: seen_items(client, keys, graph.user)
               == [items[1]] and not client.exists(keys.following(graph.user)), running,
               "the deletion and the event after it applied in Redis")
    assert not [v for k, v in committed_records(bootstrap, enriched_topic)
                if k == graph.user.encode()], "committed before the kill: no crash mid-way"
    running.worker.kill()
    assert receipts(running, keys) == 1

    running.worker.start()
    enriched, _ = outputs(running, tag, enriched=2, dead=0)
    assert [e.event.event_id for e in enriched] == ["before", "after"]
    wait_until(lambda: graph.tombstone_keys() <= {k for k, v in relation_records(running)
                                                  if v is None}, running, "the tombstones")
    tombstones = Counter(k for k, v in relation_records(running) if v is None)
    assert all(tombstones[key] == 1 for key in graph.tombstone_keys()), tombstones
    # The user's changelog: the deletion's tombstone, then the new user's state.
    states = changelog_of(running, graph.user)
    assert states[-2] is None and states[-1] is not None, states
    # Applied once: the event after the deletion keeps its online state, those before
    # stay gone, and so does the graph.
    assert seen_items(client, keys, graph.user) == [items[1]]
    assert client.exists(keys.user_vector(graph.user)) == 1
    assert client.exists(keys.acts(events_pb2.CLICK, graph.user)) == 1
    client.delete(keys.seen(graph.user), keys.user_vector(graph.user),
                  keys.acts(events_pb2.CLICK, graph.user))
    assert_gone_from_redis(client, keys, graph)
    assert "online state removed before a restart" in running.worker.log_since_start()
    wait_until(lambda: receipts(running, keys) == 0, running, "the receipt dropped")
