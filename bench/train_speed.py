"""Training throughput of a recipe on MovieLens-1M: steps/s and epoch time at 1 and 2
torch threads, fp32 and bf16, and the share of a step spent in the logit block.

    python bench/train_speed.py [--model streamrec] [--steps 20] [--out bench/results/train_speed.json]

One process builds the model once (the text cache included, not timed), then for each
(threads, precision) runs `--warmup` steps and times `--steps` optimiser steps on the
same batches the trainer draws (length-bucketed, seed 0) with the trainer's own
functions (`batch_inputs`, `StepLoss`, `update`). Precisions: ``fp32``; ``bf16-logits``
(the [positions x items] logit block and its softmax in bf16: the trainer's setting on
a CPU with native bf16); ``bf16-autocast`` (the whole step autocast, the trainer's
setting on CUDA). The logit block's share: the same steps' logit block alone (forward
and backward of the full cross-entropy on that step's states and item table), timed
apart, over the step's median. Epoch time is steps per epoch over steps/s. Medians;
the reference is fp32 at 1 thread of the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contracts.encoder import pretrained_model_dir  # noqa: E402
from training import data, offline  # noqa: E402
from training.__main__ import movielens_dir  # noqa: E402
from training.sequences import PAD, epoch_batches  # noqa: E402
from training.train import (  # noqa: E402
    StepLoss,
    batch_inputs,
    id_keep,
    live_text_rows,
    next_item_loss,
    pick_loss,
    update,
)

PRECISIONS = ("fp32", "bf16-logits", "bf16-autocast")


def _clock(device: torch.device) -> float:
    """perf_counter after the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def time_steps(model: Any, split: Any, cfg: Any, batches: list[np.ndarray], users: np.ndarray,
               kind: str, warmup: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Seconds of each step and of its logit block alone, after `warmup` untimed steps."""
    generator = torch.Generator(device=device).manual_seed(0)
    rng = np.random.default_rng(0)
    step_loss = StepLoss(model, kind=kind, cfg=cfg, generator=generator)
    optimizer = model.configure_optimizers(weight_decay=cfg.weight_decay, lr=cfg.lr,
                                           betas=cfg.betas, text_lr=cfg.text_lr)
    seen = torch.zeros(model.cfg.n_items + 1, dtype=torch.bool)
    seen[torch.from_numpy(split.train.items)] = True
    seen = seen.to(device)
    steps, blocks = [], []
    for n, batch in enumerate(batches):
        inputs, targets = batch_inputs(split.train, users[batch], model.cfg.max_len, rng,
                                       cfg.crop_prob, device)
        live = live_text_rows(model, targets, cfg.text_items_per_step, generator)
        keep = id_keep(seen, cfg, model.cfg, generator)
        started = _clock(device)
        loss = step_loss(inputs, targets, live, keep)
        update(model, optimizer, loss, factor=1.0, grad_clip=cfg.grad_clip)
        step_s = _clock(device) - started
        # the logit block alone, on this step's states and table (no gradient beyond it)
        with torch.no_grad():
            table = model.item_table(None, keep)
            states = model.user.sequence(table[inputs["items"]], inputs["event_types"],
                                         inputs["gaps_s"], inputs["mask"])
        real = targets != PAD
        states = states[real].detach().requires_grad_(True)
        table = table.detach().requires_grad_(True)
        started = _clock(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            block = next_item_loss(kind, states, table, targets[real], model.cfg.temperature,
                                   bf16_logits=cfg.bf16_logits)
        block.backward()
        block_s = _clock(device) - started
        if n >= warmup:
            steps.append(step_s)
            blocks.append(block_s)
    return steps, blocks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="streamrec", choices=offline.LEARNED)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (a GPU host)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_speed.json")
    args = parser.parse_args()

    dataset = data.read_recbole(movielens_dir())
    split = offline.split_dataset(dataset)
    rec = offline.recipe(args.model, len(dataset.item_ids), time_budget_s=1e9)
    started = time.monotonic()
    device = torch.device(args.device)
    model = offline.build_model(rec, dataset, pretrained_model_dir(), progress=True)
    build_s = time.monotonic() - started
    model.to(device)
    model.train()
    kind = pick_loss(rec.train.loss, model.cfg.n_items, rec.train.full_ce_max_items)
    users = np.flatnonzero(split.train.lengths() >= 2)
    widths = np.minimum(split.train.lengths()[users] - 1, model.cfg.max_len)
    rng = np.random.default_rng(0)
    lengths = widths if rec.train.batching == "length" else None
    batches = epoch_batches(len(users), rec.train.batch_size, rng, lengths=lengths)
    batches = batches[: args.warmup + args.steps]
    steps_per_epoch = math.ceil(len(users) / rec.train.batch_size)
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    rows: dict[str, dict[str, Any]] = {}
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for precision in PRECISIONS:
            model.load_state_dict(initial)  # every row from the same weights
            cfg = replace(rec.train, bf16=precision == "bf16-autocast",
                          bf16_logits=precision == "bf16-logits")
            steps, blocks = time_steps(model, split, cfg, batches, users, kind, args.warmup,
                                       device)
            step_s, block_s = statistics.median(steps), statistics.median(blocks)
            name = f"{threads} thread{'s' if threads > 1 else ''}, {precision}"
            rows[name] = {"threads": threads, "precision": precision,
                          "step_s": round(step_s, 4), "steps_per_s": round(1 / step_s, 3),
                          "epoch_s": round(steps_per_epoch * step_s, 1),
                          "logit_block_s": round(block_s, 4),
                          "logit_block_share": round(min(1.0, block_s / step_s), 3)}
            print(f"{name:<28} {1 / step_s:6.2f} steps/s  epoch {steps_per_epoch * step_s:7.1f} s"
                  f"  logit block {block_s * 1000:7.1f} ms ({block_s / step_s:.0%} of a step)",
                  flush=True)
    reference = next(iter(rows.values()))
    for row in rows.values():
        row["speedup_vs_first"] = round(row["steps_per_s"] / reference["steps_per_s"], 2)
    result = {
        "command": " ".join(["python bench/train_speed.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads max, torch {torch.__version__}"
                   + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "device": str(device),
        "model": args.model, "steps_timed": args.steps, "warmup": args.warmup,
        "steps_per_epoch": steps_per_epoch, "batch_size": rec.train.batch_size,
        "build_s_text_cache_included": round(build_s, 1),
        "reference": next(iter(rows)), "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
