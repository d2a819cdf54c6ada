"""From the SASRec+ recipe towards the shipped model, one change at a time (MovieLens-1M).

    python bench/ablation.py [--epochs 20] [--rows anchor,cosine,schedule,text,context,shipped]

Every row trains for the same number of epochs (no time cap, no early stopping, one
process after another, `--threads` torch threads), is tested with `training.quality`
(seen items excluded, and nothing excluded), and is written to bench/results/ablation.json
and bench/README.md as soon as it finishes, with its validation NDCG@10 after every epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.quality import write_readme  # noqa: E402
from contracts.encoder import pretrained_model_dir  # noqa: E402
from training import data, offline  # noqa: E402
from training.__main__ import movielens_dir  # noqa: E402
from training.offline import Recipe  # noqa: E402
from training.quality import evaluate_scorer, model_scorer  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "ablation.json"
SECTION = "## Model quality: from SASRec+ to the shipped model (MovieLens-1M)"


def _shipped(n_items: int) -> Recipe:
    return offline.recipe("streamrec", n_items, time_budget_s=1e9)


# name -> (what changes from the anchor, the change); the anchor is the `sasrec` recipe
ROWS: dict[str, tuple[str, Callable[[Recipe, int], Recipe]]] = {
    "anchor": ("SASRec+ (`sasrec`)", lambda r, n: r),
    "cosine": ("cosine / temperature 0.05 instead of the plain dot product",
               lambda r, n: replace(r, model=replace(r.model, score="cosine",
                                                     temperature=0.05))),
    "schedule": ("the shipped optimiser: AdamW (wd 0.01), lr 5e-3, batch 64, 50 warm-up "
                 "steps then cosine decay, gradient clipping 1",
                 lambda r, n: replace(r, train=replace(
                     _shipped(n).train, epochs=r.train.epochs, id_dropout=0.0))),
    "text": ("+ text features (item tower: id + fine-tuned MiniLM top layer, id dropout 0.1)",
             lambda r, n: replace(r, model=replace(r.model, use_text=True),
                                  train=replace(r.train, id_dropout=0.1,
                                                text_items_per_step=16), text_layers=1)),
    "context": ("+ event-type and time-gap embeddings",
                lambda r, n: replace(r, model=replace(r.model, use_context=True))),
    "blocks": ("pre-norm GELU blocks with 2 heads instead of SASRec's",
               lambda r, n: replace(r, model=replace(r.model, block="pre", n_heads=2,
                                                     attn_dropout=0.0))),
    "shipped": ("the shipped model (`streamrec`: all of the above)",
                lambda r, n: replace(_shipped(n), train=replace(_shipped(n).train,
                                                                epochs=r.train.epochs))),
}


def run_row(name: str, dataset: data.Dataset, split: Any, epochs: int,
            device: torch.device) -> dict[str, Any]:
    n_items = len(dataset.item_ids)
    anchor = offline.recipe("sasrec", n_items, time_budget_s=1e9)
    anchor = replace(anchor, train=replace(anchor.train, epochs=epochs))
    rec = ROWS[name][1](anchor, n_items)
    started = time.monotonic()
    fitted = offline.fit(rec, dataset, split, text_model_dir=pretrained_model_dir(),
                         device=device, progress=False)
    seconds = time.monotonic() - started
    users = split.eval_users
    out = evaluate_scorer(model_scorer(fitted.model, split.full, device), users,
                          split.full.lengths()[users] - 1, split.test_targets, seqs=split.full,
                          candidates=offline.candidates_of(split, n_items), progress=False)
    return {protocol: {**{k: round(v, 4) for k, v in out[protocol].items()
                          if k != "candidates"},
                       "train_seconds": round(seconds, 1), "epochs": fitted.epochs}
            for protocol in out}


def markdown(result: dict[str, Any]) -> str:
    cols = ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "mrr", "train_seconds")
    lines = [SECTION, "", f"`{result['command']}` ({result['date']}, load {result['load']}); "
             f"every row {result['epochs']} epochs, {result['threads']} threads, seen items "
             "excluded (unfiltered HR@10 / NDCG@10 in the last column).", "",
             "| row | change from the anchor | " + " | ".join(cols) + " | unfiltered |",
             "|---|---|" + "---|" * (len(cols) + 1)]
    for name, row in result["rows"].items():
        seen, plain = row["seen_excluded"], row["unfiltered"]
        lines.append(f"| {name} | {ROWS[name][0]} | " + " | ".join(str(seen[c]) for c in cols)
                     + f" | {plain['hr@10']} / {plain['ndcg@10']} |")
    return "\n".join([*lines, ""])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rows", default="anchor,text,cosine,schedule,context,blocks,shipped")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = data.read_recbole(movielens_dir())
    split = offline.split_dataset(dataset)
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    result: dict[str, Any] = {
        "command": " ".join(["python bench/ablation.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "load": load,
        "epochs": args.epochs, "threads": args.threads, "rows": {}}
    for name in [r for r in args.rows.split(",") if r]:
        result["rows"][name] = run_row(name, dataset, split, args.epochs,
                                       offline.pick_device(args.device))
        result["load"] = f"{load} -> " + "/".join(f"{x:.1f}" for x in os.getloadavg())
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        write_readme(markdown(result), SECTION)
        print(name, result["rows"][name]["seen_excluded"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
