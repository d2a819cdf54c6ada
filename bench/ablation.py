"""From the SASRec+ recipe towards the shipped model, one change at a time (MovieLens-1M),
and candidate recipes past the shipped one.

    python bench/ablation.py [--epochs 20] [--rows anchor,cosine,schedule,text,context,shipped]
    python bench/ablation.py --patience 10 --time-budget 3600 --jobs 10 --device cuda
    python bench/ablation.py --record RESULT.json      # file a result measured elsewhere

Without `--patience` every row trains for the same number of epochs (no time cap, no
early stopping). With it, every row trains until validation NDCG@10 (seen excluded) has
not improved for that many epochs, keeps its best epoch's weights, and `--time-budget` is
a cap (the shipped schedule's decay follows it). `--jobs N` trains N rows at once, each in
its own process (for a GPU host; on this 2-core machine one at a time). Each row is tested
with `training.quality` (seen items excluded, and nothing excluded) and written to
`--out` (bench/results/ablation.json) and bench/README.md as soon as it finishes.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
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
                     _shipped(n).train, epochs=r.train.epochs, id_dropout=0.0,
                     time_budget_s=r.train.time_budget_s, patience=r.train.patience))),
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
                lambda r, n: _from_shipped(r, n)),
    # candidates past the shipped recipe: one change each from `shipped`
    "shipped-random": ("shipped + random batches and positions from the oldest event "
                       "(what closed SASRec+'s gap)",
                       lambda r, n: _from_shipped(r, n, batching="random",
                                                  positions="oldest")),
    "shipped-deep": ("shipped with 4 blocks instead of 2",
                     lambda r, n: _from_shipped(r, n, n_blocks=4)),
    "shipped-wide": ("shipped with d 128 instead of 64 (4 heads)",
                     lambda r, n: _from_shipped(r, n, dim=128, n_heads=4)),
    "shipped-timebias": ("shipped + a learned attention bias per head from the time "
                         "between two events (HSTU's relative bias, its time part)",
                         lambda r, n: _from_shipped(r, n, time_bias=True)),
}


def _from_shipped(anchor: Recipe, n_items: int, *, batching: str | None = None,
                  **model: Any) -> Recipe:
    """The shipped recipe with the anchor's epochs and budget, and `model` / `batching`
    changed."""
    rec = _shipped(n_items)
    train = replace(rec.train, epochs=anchor.train.epochs,
                    time_budget_s=anchor.train.time_budget_s, patience=anchor.train.patience)
    if batching is not None:
        train = replace(train, batching=batching)
    return replace(rec, model=replace(rec.model, **model), train=train)


def run_row(name: str, epochs: int, device_name: str, *, patience: int = 0,
            time_budget_s: float = 1e9, threads: int = 2) -> dict[str, Any]:
    """Train and test one row in this process (a pool's worker, or the main process)."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s {name} %(name)s %(message)s")
    device = offline.pick_device(device_name)
    dataset = data.read_recbole(movielens_dir())
    split = offline.split_dataset(dataset)
    n_items = len(dataset.item_ids)
    anchor = offline.recipe("sasrec", n_items, time_budget_s=time_budget_s, patience=patience)
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
    row: dict[str, Any] = {
        protocol: {**{k: round(v, 4) for k, v in out[protocol].items() if k != "candidates"},
                   "train_seconds": round(seconds, 1), "epochs": fitted.epochs,
                   "best_epoch": fitted.best_epoch}
        for protocol in out}
    row["validation"] = [[e, round(v, 4)] for e, v in fitted.validation]
    return row


def markdown(result: dict[str, Any]) -> str:
    cols = ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "mrr", "train_seconds", "epochs")
    if result.get("patience"):
        how = (f"every row early-stopped on validation NDCG@10 (patience "
               f"{result['patience']}, best epoch's weights kept, cap "
               f"{result['time_budget_s']:.0f} s)")
    else:
        how = f"every row {result['epochs']} epochs"
    lines = [SECTION, "", f"`{result['command']}` ({result['date']}, load {result['load']}, "
             f"{result.get('machine', '')}); {how}, {result.get('jobs', 1)} row(s) at once, "
             f"{result['threads']} thread(s) each, seen items excluded (unfiltered HR@10 / "
             "NDCG@10 in the last column).", "",
             "| row | change from the anchor | " + " | ".join(cols) + " | unfiltered |",
             "|---|---|" + "---|" * (len(cols) + 1)]
    for name, row in result["rows"].items():
        seen, plain = row["seen_excluded"], row["unfiltered"]
        lines.append(f"| {name} | {ROWS[name][0]} | " + " | ".join(str(seen[c]) for c in cols)
                     + f" | {plain['hr@10']} / {plain['ndcg@10']} |")
    notes = [f"- {note}" for note in result.get("notes", [])]
    return "\n".join([*lines, *([""] + notes if notes else []), ""])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20,
                        help="epochs per row (with --patience: at most)")
    parser.add_argument("--rows", default="anchor,text,cosine,schedule,context,blocks,shipped")
    parser.add_argument("--patience", type=int, default=0,
                        help="early-stop each row on validation NDCG@10 (0: --epochs each)")
    parser.add_argument("--time-budget", type=float, default=1e9,
                        help="wall seconds per row at most (with --patience)")
    parser.add_argument("--jobs", type=int, default=1, help="rows trained at once")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per row")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--record", type=Path,
                        help="write this result file's table into bench/README.md and --out")
    args = parser.parse_args()
    if args.record:
        recorded = json.loads(args.record.read_text())
        args.out.write_text(json.dumps(recorded, indent=2) + "\n")
        write_readme(markdown(recorded), SECTION)
        return 0
    names = [r for r in args.rows.split(",") if r]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    device = offline.pick_device(args.device)
    result: dict[str, Any] = {
        "command": " ".join(["python bench/ablation.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "load": load,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}"
                   + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "epochs": args.epochs, "patience": args.patience, "time_budget_s": args.time_budget,
        "jobs": args.jobs, "threads": args.threads, "rows": {}}

    def finished(name: str, row: dict[str, Any]) -> None:
        result["rows"][name] = row
        result["rows"] = {n: result["rows"][n] for n in names if n in result["rows"]}
        result["load"] = f"{load} -> " + "/".join(f"{x:.1f}" for x in os.getloadavg())
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        write_readme(markdown(result), SECTION)
        print(name, row["seen_excluded"], flush=True)

    settings = {"patience": args.patience, "time_budget_s": args.time_budget,
                "threads": args.threads}
    if args.jobs <= 1:
        for name in names:
            finished(name, run_row(name, args.epochs, args.device, **settings))
        return 0
    with ProcessPoolExecutor(max_workers=args.jobs,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_row, name, args.epochs, args.device, **settings): name
                   for name in names}
        failed = 0
        for future in as_completed(futures):
            try:
                row = future.result()
            except Exception as error:  # one row's failure keeps the others' figures
                failed += 1
                print(f"{futures[future]} failed: {error!r}", file=sys.stderr, flush=True)
                continue
            finished(futures[future], row)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
