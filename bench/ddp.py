"""Wall time per epoch of one process against two under torchrun (gloo, one thread each),
ID-only SASRec on slices of MovieLens-1M; quality (NDCG@10, seen excluded) alongside.

    python bench/ddp.py [--reps 2] [--out bench/results/ddp.json]

Each repetition runs one process, then two, on the same slice with the same seed; a
run's epoch time is its fit time over its epochs (the ID-only model builds in
milliseconds). Prints medians; the one-process run is the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.__main__ import movielens_dir  # noqa: E402

SLICES = (  # (users, newest ratings per user, epochs)
    (600, 30, 20),
    (1000, 200, 2),
)


def write_slice(path: Path, users: int, per_user: int) -> int:
    frame = pd.read_csv(movielens_dir() / "ml-1m.inter", sep="\t")
    frame.columns = ["user_id", "item_id", "rating", "timestamp"]
    first = frame["user_id"].drop_duplicates().iloc[:users]
    frame = frame[frame["user_id"].isin(first)].sort_values(["user_id", "timestamp"],
                                                            kind="stable")
    frame = frame.groupby("user_id", sort=False).tail(per_user)
    frame[["user_id", "item_id", "timestamp"]].to_csv(path, index=False)
    return len(frame)


def one_run(processes: int, data: Path, epochs: int, out: Path) -> dict[str, float]:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone",
                     "--nproc-per-node", str(processes)]
    subprocess.run([*launcher, "-m", "training", "evaluate", "--interactions", str(data),
                    "--models", "sasrec", "--max-epochs", str(epochs), "--threads", "1",
                    "--time-budget", "3600", "--out", str(out)],
                   cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True,
                   capture_output=True)
    row = json.loads(out.read_text())["models"]["sasrec"]
    return {"epoch_s": row["train_seconds"] / row["epochs"], "ndcg@10": row["ndcg@10"],
            "hr@10": row["hr@10"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ddp.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for users, per_user, epochs in SLICES:
            data = Path(tmp) / f"slice{users}.csv"
            events = write_slice(data, users, per_user)
            runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
            for _ in range(args.reps):
                for processes in (1, 2):
                    runs[processes].append(one_run(processes, data, epochs,
                                                   Path(tmp) / "out.json"))
            row: dict[str, Any] = {"users": users, "per_user": per_user, "events": events,
                                   "epochs": epochs}
            for processes, measured in runs.items():
                row[f"{processes}_proc"] = {
                    "epoch_s_median": round(statistics.median(m["epoch_s"] for m in measured), 3),
                    "epoch_s": [round(m["epoch_s"], 3) for m in measured],
                    "ndcg@10": [m["ndcg@10"] for m in measured],
                }
            row["speedup"] = round(row["1_proc"]["epoch_s_median"]
                                   / row["2_proc"]["epoch_s_median"], 2)
            print(json.dumps(row), flush=True)
            results.append(row)
    load = os.getloadavg()
    args.out.write_text(json.dumps({
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "cores": os.cpu_count(),
        "loadavg": [round(x, 2) for x in load], "reps": args.reps, "slices": results,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
