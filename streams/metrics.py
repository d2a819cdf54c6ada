"""Prometheus metrics of the worker, in a registry of its own, served over HTTP by
:class:`MetricsServer` when ``metrics_port`` is set (0: any free port, logged)."""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from mode import Service
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from streams.fanout import FanoutCounts

log = logging.getLogger(__name__)

# Seconds: encoder calls and freshness span a millisecond to seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class StreamsMetrics:
    """Every metric of one worker."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_in = Counter("streams_events_in", "records read from events", registry=r)
        self.enriched = Counter("streams_events_enriched", "events written to events.enriched",
                                registry=r)
        self.dead_lettered = Counter("streams_events_dead_lettered",
                                     "records written to events.dlq", ["reason"], registry=r)
        self.items_embedded = Counter("streams_items_embedded", "item vectors published",
                                      registry=r)
        self.user_vectors = Counter("streams_user_vectors", "user vectors written to Redis",
                                    registry=r)
        self.lag = Gauge("streams_consumer_lag", "records of events behind the partition's end, "
                         "after the last batch", ["partition"], registry=r)
        self.batch_size = Histogram("streams_batch_size", "records per batch of events",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.encode_seconds = Histogram("streams_encode_seconds",
                                        "one encoder call for a batch", ["encoder"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.freshness = Histogram(
            "streams_freshness_seconds",
            "record timestamp (produce time) to the Redis write of its online state done",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.vector_deferral = Histogram(
            "streams_vector_deferral_seconds",
            "deferred user vectors: a user's first batch since its last vector to the write "
            "of its new one", buckets=LATENCY_BUCKETS, registry=r,
        )
        self.deletions = Counter("streams_user_deletions", "users deleted (control records "
                                 "applied)", registry=r)
        self.deleted_edges = Counter("streams_deleted_edges", "relation tombstones written "
                                     "for deleted users", registry=r)
        self.model = Gauge("streams_model_info", "model version in use (value 1)", ["version"],
                           registry=r)
        # The social graph (relations) and the fan-out of acts into followers' feeds.
        self.relations_in = Counter("streams_relations_in", "records read from relations",
                                    registry=r)
        self.relations_applied = Counter("streams_relations_applied",
                                         "edge changes applied to the graph in Redis", registry=r)
        self.relations_dead_lettered = Counter("streams_relations_dead_lettered",
                                               "records of relations written to events.dlq",
                                               ["reason"], registry=r)
        self.hot_accounts = Gauge("streams_social_hot_accounts",
                                  "accounts read on demand (fan-in), after the last graph write",
                                  registry=r)
        self.feed_writes = Counter("streams_social_feed_writes",
                                   "acts written into followers' feeds (fan-out on write)",
                                   registry=r)
        self.fanin_acts = Counter("streams_social_fanin_acts",
                                  "acts of hot accounts, not written into feeds", registry=r)

    def fanned_out(self, counts: FanoutCounts) -> None:
        self.feed_writes.inc(counts.writes)
        self.fanin_acts.inc(counts.skipped)

    def use_model(self, version: str) -> None:
        self.model.clear()
        self.model.labels(version).set(1)


class MetricsServer(Service):
    """Serves ``/metrics`` of a :class:`StreamsMetrics` registry from a thread."""

    def __init__(self, metrics: StreamsMetrics, *, host: str, port: int,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._metrics = metrics
        self._host = host
        self._port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    async def on_start(self) -> None:
        self._server, self._thread = start_http_server(
            self._port, addr=self._host, registry=self._metrics.registry
        )
        log.info("metrics on http://%s:%s/metrics", self._host, self._server.server_port)

    async def on_stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
