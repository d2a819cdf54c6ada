"""The worker's side of the social graph on a Redis Cluster: the same tests as on one
Redis (test_streams_social), through a worker given a ``redis+cluster://`` URL, whose
edges, fan-out and hot accounts are written slot by slot (streams.clustergraph)."""

from __future__ import annotations

import pytest
from redis.cluster import RedisCluster
from streams_harness import Running
from test_streams_social import (  # noqa: F401 - collected here again, on the cluster
    WORKER_ENV,
    test_acts_fan_out_to_followers_capped_and_hot_accounts_fan_in,
    test_edges_appear_keep_each_other_and_go_with_their_tombstones,
    test_every_bad_relation_record_is_dead_lettered_with_its_reason,
)

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

REDIS = "cluster"


def test_the_worker_runs_on_the_cluster_with_the_relations_reader(running: Running) -> None:
    assert running.worker.env["STREAMREC_STREAMS_REDIS_URL"].startswith("redis+cluster://")
    assert isinstance(running.redis, RedisCluster)
    assert running.worker.env.get("STREAMREC_STREAMS_RELATIONS_ENABLED", "true") == "true"
