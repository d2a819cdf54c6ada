"""The console's pure parts: figures from Prometheus text, SVG charts, settings."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import ValidationError

from console.charts import bar_chart, line_chart
from console.figures import Snapshot, difference, overview, parse, quantile, series
from console.settings import ConsoleSettings


def test_quantile_interpolates_within_the_bucket_like_histogram_quantile() -> None:
    cumulative = [(0.1, 10.0), (0.2, 30.0), (0.4, 40.0), (float("inf"), 40.0)]
    assert quantile(0.25, cumulative) == pytest.approx(0.1)  # rank 10: the first bound
    assert quantile(0.5, cumulative) == pytest.approx(0.15)  # rank 20: half into (0.1, 0.2]
    assert quantile(1.0, cumulative) == pytest.approx(0.4)
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert quantile(0.99, [(0.1, 1.0), (float("inf"), 10.0)]) == 0.1  # in +Inf: the last bound


def test_difference_is_the_window_between_scrapes_and_survives_a_restart() -> None:
    older = [(0.1, 5.0), (float("inf"), 8.0)]
    assert difference([(0.1, 7.0), (float("inf"), 12.0)], older) == [(0.1, 2.0), (float("inf"), 4.0)]
    restarted = [(0.1, 1.0), (float("inf"), 1.0)]
    assert difference(restarted, older) == restarted


def _exposition(events: int, reasons: dict[str, int], fresh: list[float]) -> str:
    registry = CollectorRegistry()
    Counter("streams_events_in", "", registry=registry).inc(events)
    dead = Counter("streams_events_dead_lettered", "", ["reason"], registry=registry)
    for reason, n in reasons.items():
        dead.labels(reason).inc(n)
    Gauge("streams_consumer_lag", "", ["partition"], registry=registry).labels("0").set(7)
    histogram = Histogram("streams_freshness_seconds", "", buckets=(0.1, 1.0), registry=registry)
    for seconds in fresh:
        histogram.observe(seconds)
    return generate_latest(registry).decode()


def test_overview_reads_totals_reasons_lag_rates_and_percentiles() -> None:
    older = Snapshot(at=100.0, streams=parse(_exposition(100, {"duplicate": 1}, [0.05])))
    newer = Snapshot(at=110.0, streams=parse(_exposition(300, {"duplicate": 2, "unknown_item": 3},
                                                         [0.05, 0.5, 0.5])))
    figures = overview(newer, older)
    assert figures.events_in == 300 and figures.events_per_s == pytest.approx(20.0)
    assert figures.dead_lettered == {"duplicate": 2, "unknown_item": 3}
    assert figures.dead_lettered_per_s == pytest.approx(0.4)
    assert figures.lag == 7
    assert figures.freshness_s[0.5] == pytest.approx(0.1 + 0.9 * (1.5 - 1) / 2)
    assert figures.recommend_s[0.5] is None  # no serving scrape
    charts = {s.title: s.points for s in series([older, newer])}
    assert charts["events in"] == [(110.0, pytest.approx(20.0))]
    assert charts["freshness p95"][0][1] == pytest.approx(0.1 + 0.9 * (1.9 - 0) / 2)


def test_line_chart_draws_known_points_and_says_when_there_are_none() -> None:
    chart = str(line_chart([(0, 1.0), (1, None), (2, 2.0), (3, 4.0)], title="loss", unit="nats"))
    assert chart.startswith("<svg") and 'aria-label="loss"' in chart
    assert chart.count("<polyline") == 1 and chart.count("<circle") == 1  # the gap splits it
    assert "no data yet" in str(line_chart([(0, None)], title="<empty>"))
    assert "&lt;empty&gt;" in str(line_chart([], title="<empty>"))  # escaped


def test_bar_chart_scales_to_the_largest_value() -> None:
    chart = str(bar_chart([("a", 10.0), ("b", 5.0)], title="reasons"))
    assert chart.count('class="bar"') == 2 and ">a</text>" in chart
    label = "20261202T023807Z (production)"
    wide = str(bar_chart([(label, 90.0)], title="share"))
    bar_x = float(wide.split('<rect x="')[1].split('"')[0])
    assert bar_x >= 6 * len(label)  # the label's column holds the whole label


def test_settings_bind_loopback_and_fail_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ConsoleSettings().host == "127.0.0.1"
    assert ConsoleSettings().token is None
    monkeypatch.setenv("STREAMREC_CONSOLE_PORT", "70000")
    with pytest.raises(ValidationError):
        ConsoleSettings()
