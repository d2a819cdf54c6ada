"""The scaling figures of docs/scaling.md, gathered from the benchmarks that measured them.

    python bench/scale.py [--out bench/results/scale.json]

Reads what these wrote under bench/results/ and runs nothing itself:

- ``index_layouts.json``: ``python bench/index_layouts.py --items 10000000 --queries 500``
- ``serving-10m.json``: ``PYTHONPATH=. python bench/serving.py --items 10000000 --dim 64
  --users 2000 --duration 4 --concurrency 1,8 --server-env STREAMREC_SERVING_NPROBE=256
  --out bench/results/serving-10m.json``
- ``streams.json`` and ``streams-2workers.json``: ``python -m bench.streams`` with
  ``--workers 1`` and ``--workers 2 --out bench/results/streams-2workers.json``
- ``serving-replicas-1.json`` and ``-2.json``: ``bench/serving.py --replicas 1|2``
- ``redis_memory.json``: ``python bench/redis_memory.py``
- ``train_speed.json``: ``python bench/train_speed.py``

A source that is missing is named under ``"missing"``; the rest is written to ``--out``
and printed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def index_figures(data: dict[str, Any]) -> dict[str, Any]:
    """Memory per 1M items, build time and the recall/latency pick of the 10M layouts."""
    per_million = {
        name: {"stored_mb": round(layout["stored_bytes_per_item"] * 1e6 / 2**20, 1),
               "resident_mb": round(layout["resident_bytes_per_item"] * 1e6 / 2**20, 1)}
        for name, layout in data["layouts"].items()
    }
    return {
        "items": data["items"], "dim": data["dim"],
        "memory_per_1m_items_mb": per_million,
        "id_maps_per_1m_items_mb": round(data["id_maps_bytes_per_item"] * 1e6 / 2**20, 1),
        "build_s": {name: layout["build_s"] for name, layout in data["layouts"].items()},
        "exact_p50_ms": data["exact"]["p50_ms"],
        "reference": data.get("reference"),
        "pick": data["pick"],
    }


def serving_figures(data: dict[str, Any]) -> dict[str, Any]:
    """Recall of the served index and Recommend latency and calls/s per concurrency."""
    points = {key: value["recommend"] for key, value in data.items()
              if key.startswith("c") and isinstance(value, dict) and "recommend" in value}
    return {"items": data["items"], "recall@10": data["recall@10"],
            "server_env": data.get("setup", {}).get("server_env"),
            "recommend": {key: {name: point[name] for name in ("p50_ms", "p99_ms", "qps")}
                          for key, point in points.items()}}


def streams_figures(data: dict[str, Any]) -> dict[str, Any]:
    return {name: data.get(name) for name in (
        "workers", "events", "events_per_s", "steady_p10_p90_events_per_s",
        "raw_consume_per_s", "ratio")}


def redis_figures(data: dict[str, Any]) -> dict[str, Any]:
    return {run["profile"]["name"]: run["memory_usage_mib_per_100k_users"]["total"]
            for run in data["runs"]}


def training_figures(data: dict[str, Any]) -> dict[str, Any]:
    """Epoch seconds over MovieLens-1M (1,000,209 events), so seconds per 1M events."""
    return {name: row["epoch_s"] for name, row in data["rows"].items()}


SOURCES: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "index_10m": ("index_layouts.json", index_figures),
    "recommend_10m": ("serving-10m.json", serving_figures),
    "streams_1_worker": ("streams.json", streams_figures),
    "streams_2_workers": ("streams-2workers.json", streams_figures),
    "serving_1_replica": ("serving-replicas-1.json", serving_figures),
    "serving_2_replicas": ("serving-replicas-2.json", serving_figures),
    "redis_mib_per_100k_users": ("redis_memory.json", redis_figures),
    "training_epoch_s_per_1m_events": ("train_speed.json", training_figures),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    missing: list[str] = []
    for key, (name, extract) in SOURCES.items():
        path = RESULTS / name
        if path.is_file():
            figures[key] = {"source": f"bench/results/{name}", **extract(json.loads(path.read_text()))}
        else:
            missing.append(name)
    if missing:
        figures["missing"] = missing
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
