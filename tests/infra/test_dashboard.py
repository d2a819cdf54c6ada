"""The provisioned Grafana dashboard and Prometheus config of compose/: every metric a
panel queries is one the deployable its query names (``job="streams"`` or
``job="serving"``) exports, and Prometheus scrapes a job of each name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from serving.index import ItemIndex
from serving.metrics import Metrics
from serving.models import Model, Models
from streams.metrics import StreamsMetrics

COMPOSE = Path(__file__).resolve().parents[2] / "compose"
DASHBOARD = COMPOSE / "grafana" / "dashboards" / "streamrec-overview.json"
_JOB = re.compile(r'job="([a-z]+)"')
_METRIC = re.compile(r"\b((?:streams|streamrec)_[a-z_]+)\b")
# the samples a family of each type exposes, by suffix
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
             "unknown": ("",)}


def exported(text: str) -> set[str]:
    """Sample names an exposition's families stand for, observed or not yet."""
    return {family.name + suffix for family in text_string_to_metric_families(text)
            for suffix in _SUFFIXES.get(family.type, ("",))}


@pytest.fixture(scope="module")
def deployables() -> dict[str, set[str]]:
    """job name -> what that deployable's own registry exports."""
    serving = Metrics(Models(Model("v1", ItemIndex(2))))
    return {"streams": exported(generate_latest(StreamsMetrics().registry).decode()),
            "serving": exported(generate_latest(serving.registry).decode())}


def queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every target of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"]
            for target in panel.get("targets", [])]


def test_every_panel_queries_metrics_its_deployable_exports(
    deployables: dict[str, set[str]]
) -> None:
    assert len(queries()) >= 9
    for title, expr in queries():
        jobs = set(_JOB.findall(expr))
        assert len(jobs) == 1, f"{title}: {expr} names no single deployable (job=...)"
        (job,) = jobs
        metrics = set(_METRIC.findall(expr))
        assert metrics, f"{title}: no streamrec metric in {expr}"
        missing = metrics - deployables[job]
        assert not missing, f"{title}: {sorted(missing)} are not exported by {job}"


def test_a_renamed_metric_is_caught(deployables: dict[str, set[str]]) -> None:
    assert "streams_events_in_total" in deployables["streams"]
    assert "streams_events_in_total" not in deployables["serving"]
    assert "streams_events_in" not in deployables["streams"]  # a counter is read as _total


def test_prometheus_scrapes_each_job_the_dashboard_names() -> None:
    config = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    named = {job for _, expr in queries() for job in _JOB.findall(expr)}
    assert named == {"streams", "serving"} and named <= jobs


def test_grafana_provisions_the_dashboard_from_prometheus() -> None:
    provisioning = COMPOSE / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    uids = {source["uid"] for source in sources["datasources"]}
    dashboard = json.loads(DASHBOARD.read_text())
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} <= uids
    providers = yaml.safe_load((provisioning / "dashboards" / "streamrec.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
