"""Prometheus metrics of one server, in their own registry (several servers per test process)."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from serving.models import Models

# Latency buckets from 0.25 ms to 2.5 s: a recommend takes ~1 ms, a batch tens of ms.
_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256,
            0.512, 1.0, 2.5)


class Metrics:
    """Latency per method, errors per method and code, index size and model versions."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("streamrec_serving_latency_seconds", "Handling time per RPC",
                                 ["method"], buckets=_BUCKETS, registry=self.registry)
        self.errors = Counter("streamrec_serving_errors", "RPCs ended with an error status",
                              ["method", "code"], registry=self.registry)
        self.index_items = Gauge("streamrec_serving_index_items", "Items in each loaded version's index",
                                 ["version"], registry=self.registry)
        self.model_role = Gauge("streamrec_serving_model_traffic_percent",
                                "Share of users per loaded version and role",
                                ["version", "role"], registry=self.registry)
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    def refresh(self, models: Models) -> None:
        """Index sizes and roles as of now (called on every scrape-relevant change)."""
        self.index_items.clear()
        self.model_role.clear()
        for model in models.loaded():
            self.index_items.labels(model.version).set(len(model.index))
        routing = models.routing
        self.model_role.labels(routing.production, "production").set(100 - routing.percent)
        if routing.previous:
            self.model_role.labels(routing.previous, "previous").set(0)
        if routing.candidate:
            self.model_role.labels(routing.candidate, "candidate").set(routing.percent)

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP; returns the bound port."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = (server, thread)
        return int(server.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http[0].shutdown()
            self._http[0].server_close()
            self._http = None
