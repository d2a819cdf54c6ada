"""Model quality on MovieLens-1M: the shipped model and every baseline, one protocol.

    python bench/quality.py [--time-budget 1500] [--models streamrec,sasrec,popular,item-knn]

Trains each learned model within the same time budget, all of them at the same time in
their own processes (`--threads` torch threads each), so every model meets the same
machine load; evaluates all of them with `training.quality` (full catalog,
leave-last-out, nothing excluded), prints the table and writes it to
bench/results/quality.json and into bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import logging
import os
import platform
import sys
from concurrent.futures import ProcessPoolExecutor
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

TARGET = (0.33, 0.19)  # HR@10, NDCG@10 (issue 3)
MODELS = {
    "streamrec": "the shipped model (text + id item tower, transformer user tower with "
                 "event types and time gaps, full softmax CE)",
    "sasrec": "ID-only SASRec, the same transformer and training (full softmax CE, "
              "\"SASRec+\"), item ids as its only input",
    "popular": "training interaction counts",
    "item-knn": "co-occurrence cosine summed over the newest 20 items",
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
        f"{proto['threads']} per model, device {proto['device']}; the learned models "
        f"trained at the same time, each in its own process with a budget of "
        f"{result['time_budget_s']:.0f} s of training (train_seconds add the text "
        "cache); the machine is shared with other engineers' work, so train_seconds are "
        "wall time under that load.", "",
        "| model | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, r in result["models"].items():
        mark = " (shipped)" if name == result["shipped"] else ""
        lines.append(f"| {name}{mark} | " + " | ".join(str(r[c]) for c in cols) + " |")
    shipped = result["models"].get(result["shipped"])
    lines += ["", "Models: " + "; ".join(f"`{k}` {v}" for k, v in MODELS.items()) + "."]
    if shipped is not None:
        met = shipped["hr@10"] >= TARGET[0] and shipped["ndcg@10"] >= TARGET[1]
        lines += ["", f"Target for the shipped model: HR@10 >= {TARGET[0]} and NDCG@10 >= "
                  f"{TARGET[1]} -- {'met' if met else 'not met'} (HR@10 {shipped['hr@10']}, "
                  f"NDCG@10 {shipped['ndcg@10']})."]
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


def one_model(name: str, threads: int, time_budget_s: float, device: str) -> dict:
    """Train (if learned) and test one model in this process; the protocol and its row."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s {name} %(name)s %(message)s")
    dataset = data.read_recbole(movielens_dir())
    result = offline.compare(dataset, [name], text_model_dir=default_model_dir(),
                             time_budget_s=time_budget_s, device=offline.pick_device(device),
                             progress=False)
    result.pop("trained")
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="streamrec,sasrec,popular,item-knn")
    parser.add_argument("--time-budget", type=float, default=1500.0,
                        help="training seconds per learned model (the issue allows 30 min "
                        "including the text cache)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per model process (on 2 shared cores one "
                        "thread per process is faster than two)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    names = [m for m in args.models.split(",") if m]
    learned = [n for n in names if n in offline.LEARNED]
    # every learned model in its own process, all at once: the same budget under the
    # same load; the cheap baselines after them
    with ProcessPoolExecutor(max_workers=max(1, len(learned)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {n: pool.submit(one_model, n, args.threads, args.time_budget, args.device)
                   for n in learned}
        done = {n: f.result() for n, f in futures.items()}
    for n in names:
        if n not in done:
            done[n] = one_model(n, args.threads, args.time_budget, args.device)
    result = {"protocol": next(iter(done.values()))["protocol"],
              "models": {n: done[n]["models"][n] for n in names}}
    result["shipped"] = offline.SHIPPED
    result["time_budget_s"] = args.time_budget
    result["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    result["machine"] = (f"{platform.machine()} {os.cpu_count()} cores (shared), no GPU, "
                         f"torch {torch.__version__}")
    command = " ".join(["python bench/quality.py", *sys.argv[1:]])
    print(format_table(result["models"]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    write_readme(markdown(result, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
