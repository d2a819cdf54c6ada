"""Prometheus metrics of one server, in their own registry (several servers per test process)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from serving.models import Models

# Latency buckets from 0.25 ms to 2.5 s: a recommend takes ~1 ms, a batch tens of ms.
_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256,
            0.512, 1.0, 2.5)


class _ModelGauges(Collector):
    """Index size and traffic share of each loaded version, read from `models` at scrape
    time (so live upserts and releases from Kafka show without anyone updating them)."""

    def __init__(self, models: Models) -> None:
        self._models = models

    def collect(self) -> Iterator[GaugeMetricFamily]:
        items = GaugeMetricFamily("streamrec_serving_index_items",
                                  "Items in each loaded version's index", labels=["version"])
        traffic = GaugeMetricFamily("streamrec_serving_model_traffic_percent",
                                    "Share of users per loaded version and role",
                                    labels=["version", "role"])
        routing = self._models.routing
        for model in self._models.loaded():
            items.add_metric([model.version], len(model.index))
        traffic.add_metric([routing.production, "production"], 100 - routing.percent)
        if routing.previous:
            traffic.add_metric([routing.previous, "previous"], 0)
        if routing.candidate:
            traffic.add_metric([routing.candidate, "candidate"], routing.percent)
        yield items
        yield traffic


class Metrics:
    """Latency per method, errors per method and code, the social source's reads and items,
    index size and model versions."""

    def __init__(self, models: Models) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("streamrec_serving_latency_seconds", "Handling time per RPC",
                                 ["method"], buckets=_BUCKETS, registry=self.registry)
        self.errors = Counter("streamrec_serving_errors", "RPCs ended with an error status",
                              ["method", "code"], registry=self.registry)
        self.social_read = Histogram("streamrec_serving_social_read_seconds",
                                     "Time of one social read (a request's or a batch's users)",
                                     buckets=_BUCKETS, registry=self.registry)
        self.social_errors = Counter("streamrec_serving_social_read_errors",
                                     "Social reads that failed; those answers had no social items",
                                     registry=self.registry)
        self.social_items = Counter("streamrec_serving_social_items",
                                    "Items shown that the social source placed (kind=result) or "
                                    "that carry social proof (kind=proof)",
                                    ["method", "kind"], registry=self.registry)
        self.registry.register(_ModelGauges(models))
        self._latency_of: dict[str, Histogram] = {}
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    def method_latency(self, method: str) -> Histogram:
        """The latency histogram of `method`, kept once looked up: ``labels()`` takes a lock
        and builds a key on every call, and every RPC records its latency."""
        child = self._latency_of.get(method)
        if child is None:
            child = self._latency_of[method] = self.latency.labels(method)
        return child

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
