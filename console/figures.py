"""The overview's figures from the deployables' Prometheus text: plain functions over
parsed samples (no HTTP here), so each figure is checked against a known exposition."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

# The metric names the console reads, by the deployable that exports them.
STREAMS_EVENTS_IN = "streams_events_in_total"
STREAMS_ENRICHED = "streams_events_enriched_total"
STREAMS_DEAD_LETTERED = "streams_events_dead_lettered_total"
STREAMS_LAG = "streams_consumer_lag"
STREAMS_FRESHNESS = "streams_freshness_seconds"
STREAMS_MODEL = "streams_model_info"
SERVING_LATENCY = "streamrec_serving_latency_seconds"
SERVING_INDEX_ITEMS = "streamrec_serving_index_items"
RECOMMEND = "Recommend"
QUANTILES = (0.5, 0.95, 0.99)

Labels = tuple[tuple[str, str], ...]
Samples = dict[str, dict[Labels, float]]  # sample name -> labels -> value


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by sample name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = float(sample.value)
    return samples


def total(samples: Samples, name: str) -> float:
    """The sum of a sample over all its label sets (0 when absent)."""
    return sum(samples.get(name, {}).values())


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """A sample's values summed by one label's value."""
    out: dict[str, float] = {}
    for labels, value in samples.get(name, {}).items():
        key = dict(labels).get(label, "")
        out[key] = out.get(key, 0.0) + value
    return out


def buckets(samples: Samples, histogram: str, **match: str) -> list[tuple[float, float]]:
    """The cumulative ``(upper bound, count)`` pairs of a histogram, summed over the label
    sets that carry every ``match`` label, ordered by bound (``+Inf`` last)."""
    counts: dict[float, float] = {}
    for labels, value in samples.get(f"{histogram}_bucket", {}).items():
        named = dict(labels)
        if all(named.get(k) == v for k, v in match.items()):
            bound = float(named["le"])
            counts[bound] = counts.get(bound, 0.0) + value
    return sorted(counts.items())


def quantile(q: float, cumulative: Sequence[tuple[float, float]]) -> float | None:
    """The `q` quantile of a histogram as Prometheus' ``histogram_quantile`` estimates it:
    linear within the bucket it falls in; the last finite bound for the ``+Inf`` bucket;
    None with no observation."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def difference(newer: Sequence[tuple[float, float]],
               older: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The observations between two scrapes of one histogram (a restart: the newer alone)."""
    before = dict(older)
    delta = [(bound, count - before.get(bound, 0.0)) for bound, count in newer]
    return list(newer) if any(count < 0 for _, count in delta) else delta


@dataclass(frozen=True)
class Snapshot:
    """One scrape of each deployable, at a wall time in seconds."""

    at: float
    streams: Samples = field(default_factory=dict)
    serving: Samples = field(default_factory=dict)

    def freshness(self) -> list[tuple[float, float]]:
        return buckets(self.streams, STREAMS_FRESHNESS)

    def recommend_latency(self) -> list[tuple[float, float]]:
        return buckets(self.serving, SERVING_LATENCY, method=RECOMMEND)


@dataclass(frozen=True)
class Overview:
    """What the overview page shows of the newest snapshot (rates: since the one before)."""

    events_in: float
    enriched: float
    dead_lettered: dict[str, float]
    lag: float
    models: list[str]  # versions streams embeds users with
    index_items: dict[str, float]  # version -> items in serving's index
    freshness_s: dict[float, float | None]  # quantile -> seconds, every observation so far
    recommend_s: dict[float, float | None]
    events_per_s: float | None = None
    enriched_per_s: float | None = None
    dead_lettered_per_s: float | None = None


def _rate(newer: Snapshot, older: Snapshot | None, name: str, samples: str) -> float | None:
    if older is None or newer.at <= older.at:
        return None
    now = total(getattr(newer, samples), name)
    before = total(getattr(older, samples), name)
    counted = now - before if now >= before else now  # lower: the deployable restarted
    return counted / (newer.at - older.at)


def overview(newer: Snapshot, older: Snapshot | None = None) -> Overview:
    streams, serving = newer.streams, newer.serving
    return Overview(
        events_in=total(streams, STREAMS_EVENTS_IN),
        enriched=total(streams, STREAMS_ENRICHED),
        dead_lettered=by_label(streams, STREAMS_DEAD_LETTERED, "reason"),
        lag=total(streams, STREAMS_LAG),
        models=sorted(v for v, one in by_label(streams, STREAMS_MODEL, "version").items() if one),
        index_items=by_label(serving, SERVING_INDEX_ITEMS, "version"),
        freshness_s={q: quantile(q, newer.freshness()) for q in QUANTILES},
        recommend_s={q: quantile(q, newer.recommend_latency()) for q in QUANTILES},
        events_per_s=_rate(newer, older, STREAMS_EVENTS_IN, "streams"),
        enriched_per_s=_rate(newer, older, STREAMS_ENRICHED, "streams"),
        dead_lettered_per_s=_rate(newer, older, STREAMS_DEAD_LETTERED, "streams"),
    )


@dataclass(frozen=True)
class Series:
    """One chart's points: (wall time s, value), None where the figure had no value."""

    title: str
    unit: str
    points: list[tuple[float, float | None]]


def series(history: Sequence[Snapshot]) -> list[Series]:
    """The overview's time series, one point per pair of successive snapshots: rates, lag
    and the windowed p95 of freshness and Recommend latency."""
    pairs: Iterable[tuple[Snapshot, Snapshot]] = zip(history, history[1:])
    rates: list[tuple[float, float | None]] = []
    enriched: list[tuple[float, float | None]] = []
    lag: list[tuple[float, float | None]] = []
    fresh: list[tuple[float, float | None]] = []
    latency: list[tuple[float, float | None]] = []
    for older, newer in pairs:
        rates.append((newer.at, _rate(newer, older, STREAMS_EVENTS_IN, "streams")))
        enriched.append((newer.at, _rate(newer, older, STREAMS_ENRICHED, "streams")))
        lag.append((newer.at, total(newer.streams, STREAMS_LAG)))
        fresh.append((newer.at, quantile(0.95, difference(newer.freshness(), older.freshness()))))
        latency.append((newer.at, quantile(0.95, difference(newer.recommend_latency(),
                                                             older.recommend_latency()))))
    return [Series("events in", "/s", rates), Series("enriched", "/s", enriched),
            Series("consumer lag", "records", lag), Series("freshness p95", "s", fresh),
            Series("Recommend latency p95", "s", latency)]


def names_in(text: str) -> Mapping[str, str]:
    """Family name -> type of an exposition (the Grafana dashboard's check)."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}
