"""Offline evaluation at shop scale: a grocery-shaped log through the CSV import.

    python bench/shop_scale.py [--events 1500000] [--items 90000] [--users 20000]
                               [--models popular,item-knn,streamrec] [--time-budget 300]

Writes a synthetic purchase log of the given size (CSV, the import's column conventions:
``user_id,item_id,timestamp,event_type`` and ``item_id,title,categories``) and runs
``python -m training evaluate --interactions .. --items .. --out ..`` on it in a child
process, as a shop's engineer would, sampling the child's resident memory. Reported per
model: train_seconds (its whole fit, text cache and refresh included, against the
budget), peak_rss_mb (the table's own figure), and the test metrics; for the whole run:
wall seconds, the child's peak RSS, and when each model's figures reached the result
file (written as each model finishes). Results: bench/results/shop_scale.json.

The log is synthetic -- a test of scale, not of quality: product popularity is Zipf
(s = 1.1), each user keeps a repertoire of ~40 products drawn by popularity and fills
baskets of ~10 products, 70 % from the repertoire (reorders) and the rest by popularity;
products have names of three words and an aisle and a department.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "shop_scale.json"

_ADJECTIVES = ("organic", "fresh", "smoked", "sparkling", "whole", "light", "spicy", "sweet",
               "roasted", "frozen", "greek", "wild", "crunchy", "creamy", "dark", "raw")
_NOUNS = ("apples", "yogurt", "coffee", "pasta", "salmon", "bread", "cheddar", "almonds",
          "spinach", "granola", "tea", "rice", "tortillas", "hummus", "juice", "butter",
          "chocolate", "soup", "eggs", "milk", "salsa", "crackers", "honey", "oats")
_DEPARTMENTS = ("produce", "dairy eggs", "snacks", "beverages", "frozen", "pantry", "bakery",
                "deli", "canned goods", "breakfast", "meat seafood", "household")


def synthetic_log(n_events: int, n_items: int, n_users: int, seed: int = 0
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events, items) frames of a grocery-shaped purchase log (module docstring)."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 1.1
    popularity /= popularity.sum()
    order = rng.permutation(n_items)  # popularity rank -> product, so ids carry no rank
    repertoire = order[rng.choice(n_items, size=(n_users, 40), p=popularity)]
    per_user = rng.multinomial(n_events - n_users * 3, np.full(n_users, 1 / n_users)) + 3
    users = np.repeat(np.arange(n_users), per_user)
    from_repertoire = rng.random(n_events) < 0.7
    products = np.where(from_repertoire, repertoire[users, rng.integers(0, 40, n_events)],
                        order[rng.choice(n_items, size=n_events, p=popularity)])
    # baskets of ~10 lines, a few days apart; lines of a basket a second apart
    starts = np.concatenate([[0], np.cumsum(per_user)[:-1]])
    line = np.arange(n_events) - np.repeat(starts, per_user)
    basket = line // 10
    day = basket * 4 + rng.integers(0, 3, n_events) * (line % 10 == 0)
    timestamps = 1_700_000_000 + day * 86_400 + (line % 10)
    events = pd.DataFrame({"user_id": users, "item_id": products, "timestamp": timestamps,
                           "event_type": "purchase"})
    words = rng.integers(0, [len(_ADJECTIVES), len(_ADJECTIVES), len(_NOUNS)], (n_items, 3))
    titles = [f"{_ADJECTIVES[a]} {_ADJECTIVES[b]} {_NOUNS[c]} {i}" for i, (a, b, c) in
              enumerate(words)]
    departments = rng.integers(0, len(_DEPARTMENTS), n_items)
    items = pd.DataFrame({
        "item_id": np.arange(n_items), "title": titles,
        "categories": [f"{_DEPARTMENTS[d]}|aisle {d * 12 + a}" for d, a in
                       zip(departments, rng.integers(0, 12, n_items), strict=True)]})
    return events, items


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (MiB), 0 when gone."""
    total = 0
    try:
        out = subprocess.run(["ps", "-o", "rss=", "--ppid", str(pid), "-p", str(pid)],
                             capture_output=True, text=True, check=False).stdout
        total = sum(int(x) for x in out.split())
    except (OSError, ValueError):
        pass
    return total / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_500_000)
    parser.add_argument("--items", type=int, default=90_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--models", default="popular,item-knn,streamrec")
    parser.add_argument("--time-budget", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="shop-scale-") as tmp:
        started = time.monotonic()
        events, items = synthetic_log(args.events, args.items, args.users)
        events_csv, items_csv = Path(tmp) / "events.csv", Path(tmp) / "items.csv"
        events.to_csv(events_csv, index=False)
        items.to_csv(items_csv, index=False)
        written_s = time.monotonic() - started
        print(f"wrote {len(events):,} events over {events.item_id.nunique():,} products and "
              f"{args.users:,} users in {written_s:.1f} s", flush=True)
        result_path = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "training", "evaluate", "--interactions",
                   str(events_csv), "--items", str(items_csv), "--models", args.models,
                   "--time-budget", str(args.time_budget), "--threads", str(args.threads),
                   "--out", str(result_path)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        started = time.monotonic()
        child = subprocess.Popen(command, cwd=ROOT, env=env)
        peak, seen_models, arrivals = 0.0, set(), {}
        while child.poll() is None:
            peak = max(peak, _rss_mb(child.pid))
            if result_path.is_file():
                try:
                    done = json.loads(result_path.read_text()).get("models", {})
                except json.JSONDecodeError:  # being written
                    done = {}
                for name in set(done) - seen_models:
                    arrivals[name] = round(time.monotonic() - started, 1)
                seen_models |= set(done)
            time.sleep(1.0)
        wall_s = time.monotonic() - started
        if child.returncode != 0 or not result_path.is_file():
            print(f"evaluate failed: exit {child.returncode}", file=sys.stderr)
            return 1
        measured = json.loads(result_path.read_text())
    models: dict[str, Any] = {}
    for name, row in measured["models"].items():
        models[name] = {**row, "written_after_s": arrivals.get(name),
                        "within_budget": (row["train_seconds"] <= args.time_budget * 1.05
                                          if name not in ("popular", "item-knn") else None)}
    result = {
        "command": " ".join(["python bench/shop_scale.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load": "/".join(f"{x:.1f}" for x in os.getloadavg()),
        "machine": f"{platform.machine()} {os.cpu_count()} cores (shared), "
                   f"{args.threads} torch threads",
        "data": {"events": args.events, "items": args.items, "users": args.users,
                 "synthetic": True, "csv_written_s": round(written_s, 1)},
        "time_budget_s": args.time_budget, "wall_s": round(wall_s, 1),
        "peak_rss_mb": round(peak, 1), "protocol": measured["protocol"],
        "models": models, "unfiltered": measured["unfiltered"],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, row in models.items():
        print(f"{name:<10} hr@10 {row['hr@10']:.4f} ndcg@10 {row['ndcg@10']:.4f} "
              f"train {row['train_seconds']:7.1f} s  peak {row['peak_rss_mb']:8.1f} MB  "
              f"written after {row['written_after_s']} s")
    print(f"whole run {wall_s:.1f} s, peak RSS {peak:.0f} MB; written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
