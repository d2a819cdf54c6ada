"""Model quality on MovieLens-1M: the shipped model and every baseline, one protocol.

    python bench/quality.py [--time-budget 1500] [--models streamrec,sasrec,popular,item-knn]

Trains each learned model within the time budget on this machine, evaluates all of them
with `training.quality` (full catalog, leave-last-out, nothing excluded), prints the
table and writes it to bench/results/quality.json and into bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from training import data, offline  # noqa: E402
from training.__main__ import format_table, movielens_dir  # noqa: E402
from training.encoder import default_model_dir  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "quality.json"
README = ROOT / "bench" / "README.md"
SECTION = "## Model quality (MovieLens-1M)"
ANCHORS = {  # published, same protocol (full catalog, leave-last-out)
    "SASRec (HSTU paper)": (0.2853, 0.1603),
    "SASRec+ full CE (Klenitskiy & Vasilev 2023)": (0.31, 0.18),
    "HSTU-large": (0.3294, 0.1893),
}


def markdown(result: dict, command: str) -> str:
    cols = ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "mrr", "train_seconds")
    proto = result["protocol"]
    lines = [
        SECTION, "",
        f"Command: `{command}` (written by it; {result['date']}).", "",
        f"Protocol: {proto['split']}; candidates: {proto['candidates']}; excluded: "
        f"{proto['excluded']}. {proto['users']} users, {proto['items']} items, "
        f"{proto['events']} interactions. Machine: {result['machine']}, torch threads "
        f"{proto['threads']}, device {proto['device']}; shared with other work, so "
        "train_seconds are wall time under load.", "",
        "| model | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, r in result["models"].items():
        mark = " (shipped)" if name == result["shipped"] else ""
        lines.append(f"| {name}{mark} | " + " | ".join(str(r[c]) for c in cols) + " |")
    lines += ["", "Published anchors (HR@10 / NDCG@10): " + "; ".join(
        f"{k} {hr} / {nd}" for k, (hr, nd) in ANCHORS.items()) + ".", ""]
    return "\n".join(lines)


def write_readme(section: str) -> None:
    text = README.read_text() if README.is_file() else "# Benchmarks\n\n"
    if SECTION in text:
        head, _, tail = text.partition(SECTION)
        rest = tail.split("\n## ", 1)
        text = head + section + ("\n## " + rest[1] if len(rest) > 1 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    README.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="streamrec,sasrec,popular,item-knn")
    parser.add_argument("--time-budget", type=float, default=1500.0,
                        help="training seconds per learned model (the issue allows 30 min)")
    parser.add_argument("--baseline-budget", type=float, default=600.0,
                        help="training seconds of the SASRec baseline")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    dataset = data.read_recbole(movielens_dir())
    result = offline.compare(
        dataset, [m for m in args.models.split(",") if m],
        text_model_dir=default_model_dir(), time_budget_s=args.time_budget,
        budgets={"sasrec": args.baseline_budget}, device=offline.pick_device(args.device),
    )
    result.pop("trained")
    result["shipped"] = offline.SHIPPED
    result["date"] = datetime.now(UTC).strftime("%Y-%m-%d")
    result["machine"] = f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}"
    command = " ".join(["python bench/quality.py", *sys.argv[1:]])
    print(format_table(result["models"]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    write_readme(markdown(result, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
