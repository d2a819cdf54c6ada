"""Fit and evaluate models and baselines on one dataset with one protocol
(``training.quality``): what ``python -m training evaluate`` and ``bench/quality.py`` run.

Models by name:
- ``streamrec``: the shipped two-tower model -- fine-tuned text + id item tower, causal
  transformer user tower with event types and time gaps, full softmax cross-entropy;
- ``sasrec``: ID-only SASRec (no text, no event/time features) trained like the
  shipped model -- full softmax cross-entropy, the same transformer code, optimiser and
  schedule -- i.e. "SASRec+" (Klenitskiy & Vasilev 2023), the strong ID-only baseline;
  SASRec's original one-negative BCE is ``loss="bce"`` in its TrainConfig;
- ``popular`` and ``item-knn``: the non-learned baselines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from training.data import Dataset
from training.itemtext import TextTower, load_text_model
from training.model import ModelConfig
from training.quality import (
    evaluate_scorer,
    item_knn_scorer,
    model_scorer,
    popular_scorer,
)
from training.sequences import Split, build_sequences, leave_last_out
from training.train import TrainConfig, TwoTower, train

log = logging.getLogger(__name__)

SHIPPED = "streamrec"
LEARNED = ("streamrec", "sasrec")
BASELINES = ("popular", "item-knn")
TEXT_MAX_LENGTH = 64  # tokens of an item text; catalog titles + categories fit easily


@dataclass(frozen=True)
class Recipe:
    """How to build and train one learned model."""

    model: ModelConfig
    train: TrainConfig
    text_layers: int  # fine-tuned top layers of the text encoder (0 = no text)


def recipe(name: str, n_items: int, *, time_budget_s: float, seed: int = 0) -> Recipe:
    """The configuration of a learned model by name."""
    # sized for ~20 epochs of ML-1M in 25 minutes on two shared CPU cores: SASRec's
    # dim -> dim feed-forward (ffn_mult 1), light dropout and a high learning rate
    # converge fastest there; the text tower's top layer is fine-tuned on 16 of each
    # step's target items (it was a quarter of a step at 64)
    shipped = Recipe(
        model=ModelConfig(n_items=n_items, dim=64, max_len=200, n_blocks=2, n_heads=2,
                          ffn_mult=1, dropout=0.1, temperature=0.05),
        train=TrainConfig(epochs=200, time_budget_s=time_budget_s, batch_size=64, lr=5e-3,
                          warmup_steps=50, loss="auto", text_items_per_step=16, seed=seed),
        text_layers=1,
    )
    if name == "streamrec":
        return shipped
    if name == "sasrec":  # the same transformer and training; item ids are its only input
        return Recipe(
            model=replace(shipped.model, use_text=False, use_context=False),
            train=replace(shipped.train, id_dropout=0.0),
            text_layers=0,
        )
    raise ValueError(f"unknown model {name!r}; known: {', '.join(LEARNED)}")


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def build_model(
    rec: Recipe, dataset: Dataset, text_model_dir: Path | None, progress: bool = True
) -> TwoTower:
    text = None
    if rec.model.use_text:
        if text_model_dir is None:
            raise ValueError("a text model needs text_model_dir")
        base, tokenizer = load_text_model(text_model_dir)
        text = TextTower(base, tokenizer, dataset.item_texts, trainable_layers=rec.text_layers,
                         max_length=TEXT_MAX_LENGTH, progress=progress)
        rec = replace(rec, model=replace(rec.model, text_dim=text.dim))
    torch.manual_seed(rec.train.seed)
    return TwoTower(rec.model, text)


def fit(
    rec: Recipe, dataset: Dataset, split: Split, *, text_model_dir: Path | None,
    device: torch.device, progress: bool = True,
) -> tuple[TwoTower, float]:
    """Build and train; returns the model and the wall seconds (text cache included)."""
    started = time.monotonic()
    model = build_model(rec, dataset, text_model_dir, progress)
    # whole-step autocast only on CUDA: on a CPU, even with native bf16, casting every
    # small matmul of the user tower costs what it saves; the big logit block alone
    # gains (`bf16_logits`)
    train_cfg = replace(rec.train, bf16=rec.train.bf16 and device.type == "cuda" and _bf16_ok(device),
                        bf16_logits=rec.train.bf16_logits and _bf16_ok(device))
    train(model, split.train, train_cfg, device=device, progress=progress)
    return model, time.monotonic() - started


def _bf16_ok(device: torch.device) -> bool:
    from training.encoder import use_bf16

    return use_bf16(device, "auto")


def split_dataset(dataset: Dataset) -> Split:
    return leave_last_out(build_sequences(dataset.events, dataset.item_rows()))


def compare(
    dataset: Dataset, names: Sequence[str], *, text_model_dir: Path | None,
    time_budget_s: float, device: torch.device, progress: bool = True, seed: int = 0,
    budgets: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Train and test every named model on the leave-last-out split of `dataset`.

    `budgets` overrides `time_budget_s` per model name. Returns ``{"protocol": ...,
    "models": {name: {metrics..., "train_seconds": s}}, "trained": {name: TwoTower}}``.
    """
    split = split_dataset(dataset)
    n_items = len(dataset.item_ids)
    users = split.eval_users
    ends = split.full.lengths()[users] - 1  # the model sees everything before the target
    results: dict[str, dict[str, float]] = {}
    trained: dict[str, TwoTower] = {}
    log.info("%s: %s users, %s items, %s events, %s evaluated users", dataset.name,
             split.full.n_users, n_items, len(dataset.events), len(users))
    for name in names:
        started = time.monotonic()
        if name == "popular":
            score, seconds = popular_scorer(split.train, n_items), 0.0
        elif name == "item-knn":
            score = item_knn_scorer(split.train, split.full, n_items)
            seconds = time.monotonic() - started
        else:
            budget = (budgets or {}).get(name, time_budget_s)
            model, seconds = fit(recipe(name, n_items, time_budget_s=budget, seed=seed),
                                 dataset, split, text_model_dir=text_model_dir, device=device,
                                 progress=progress)
            trained[name] = model
            score = model_scorer(model, split.full, device, bf16=_bf16_ok(device))
        out = evaluate_scorer(score, users, ends, split.test_targets, desc=f"test {name}",
                              progress=progress)
        results[name] = {**{k: round(v, 4) for k, v in out.items()},
                         "train_seconds": round(seconds, 1)}
        log.info("%s: %s", name, results[name])
    return {
        "protocol": {
            "split": "leave-last-out per user (last = test, second to last = validation)",
            "candidates": "full catalog",
            "excluded": "nothing (history items stay candidates, as in HSTU's evaluation)",
            "users": int(len(users)),
            "items": n_items,
            "events": len(dataset.events),
            "threads": torch.get_num_threads(),
            "device": str(device),
        },
        "models": results,
        "trained": trained,
    }
