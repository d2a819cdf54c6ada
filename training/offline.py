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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contracts.encoder import load_pretrained, use_bf16
from training.data import Dataset
from training.distributed import SINGLE, World
from training.texttower import TextTower
from training.memory import PeakRss
from training.model import ModelConfig, TwoTower
from training.quality import (
    evaluate_scorer,
    item_knn_scorer,
    model_scorer,
    popular_scorer,
)
from training.sequences import Split, build_sequences, leave_last_out
from training.train import TrainConfig, train

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


def recipe(name: str, n_items: int, *, time_budget_s: float, seed: int = 0,
           patience: int = 0) -> Recipe:
    """The configuration of a learned model by name. `patience` > 0 trains until
    validation NDCG@10 has not improved for that many epochs (within the budget)."""
    # sized for ~20 epochs of ML-1M in 25 minutes on two shared CPU cores: SASRec's
    # dim -> dim feed-forward (ffn_mult 1), light dropout and a high learning rate
    # converge fastest there; the text tower's top layer is fine-tuned on 16 of each
    # step's target items (it was a quarter of a step at 64)
    shipped = Recipe(
        model=ModelConfig(n_items=n_items, dim=64, max_len=200, n_blocks=2, n_heads=2,
                          ffn_mult=1, dropout=0.1, temperature=0.05),
        train=TrainConfig(epochs=200, time_budget_s=time_budget_s, batch_size=64, lr=5e-3,
                          warmup_steps=50, loss="auto", text_items_per_step=16, seed=seed,
                          patience=patience, anneal_epochs=10),
        text_layers=1,
    )
    if name == "streamrec":
        return shipped
    if name == "sasrec":  # SASRec+ (Klenitskiy & Vasilev 2023), item ids its only input
        return Recipe(
            model=ModelConfig(n_items=n_items, dim=64, max_len=200, n_blocks=2, n_heads=1,
                              ffn_mult=1, dropout=0.1, attn_dropout=0.1, temperature=1.0,
                              score="dot", block="sasrec", use_text=False, use_context=False,
                              positions="oldest"),
            train=TrainConfig(epochs=1000, time_budget_s=time_budget_s, batch_size=128,
                              lr=1e-3, schedule="constant", warmup_steps=0, weight_decay=0.0,
                              betas=(0.9, 0.999), grad_clip=0.0, loss="ce", id_dropout=0.0,
                              seed=seed, patience=patience, batching="random"),
            text_layers=0,
        )
    raise ValueError(f"unknown model {name!r}; known: {', '.join(LEARNED)}")


def pick_device(requested: str = "auto", world: World = SINGLE) -> torch.device:
    """``auto``: CUDA when there is one; on several ranks, this rank's device."""
    return world.device(requested)


def build_model(
    rec: Recipe, dataset: Dataset, text_model_dir: Path | None, progress: bool = True
) -> TwoTower:
    text = None
    if rec.model.use_text:
        if text_model_dir is None:
            raise ValueError("a text model needs text_model_dir")
        # eager attention: the text tower calls its top layers with a float additive mask
        tokenizer, base = load_pretrained(text_model_dir, eager_attention=True)
        text = TextTower(base, tokenizer, dataset.item_texts, trainable_layers=rec.text_layers,
                         max_length=TEXT_MAX_LENGTH, progress=progress)
        rec = replace(rec, model=replace(rec.model, text_dim=text.dim))
    torch.manual_seed(rec.train.seed)
    return TwoTower(rec.model, text)


@dataclass(frozen=True)
class Fitted:
    model: TwoTower
    seconds: float  # wall time of building and training, text cache included
    epochs: int
    best_epoch: int  # the epoch whose weights the model kept (0: the last)
    losses: tuple[float, ...] = ()  # mean training loss per epoch
    validation: tuple[tuple[int, float], ...] = ()  # (epoch, validation score)

    def curve(self) -> dict[str, Any]:
        """The manifest's ``metrics.training`` entry (docs/contracts.md §4): the loss per
        epoch and the validation scores, for the operator console's training-loss chart."""
        return {"epochs": self.epochs, "best_epoch": self.best_epoch, "seconds": self.seconds,
                "losses": list(self.losses),
                "validation": [[epoch, score] for epoch, score in self.validation]}


def fit(
    rec: Recipe, dataset: Dataset, split: Split, *, text_model_dir: Path | None,
    device: torch.device, progress: bool = True, world: World = SINGLE,
) -> Fitted:
    """Build and train within ``rec.train.time_budget_s`` of wall time, everything the
    model's training does included: the text cache is built inside the budget, and the
    measured cost of its first pooling is set aside for the refresh of every item's text
    after training.
    With ``rec.train.patience`` the validation targets drive early stopping.

    With a distributed `world` every rank calls this on the same data; training is
    data-parallel (``training.train``), the main rank's clock and validation rule, and
    only the main rank's model is the result (the others' are not refreshed)."""
    started = time.monotonic()
    progress = progress and world.main
    model = build_model(rec, dataset, text_model_dir, progress)
    built = time.monotonic() - started
    # whole-step autocast only on CUDA: on a CPU, even with native bf16, casting every
    # small matmul of the user tower costs what it saves; the big logit block alone
    # gains (`bf16_logits`)
    train_cfg = replace(rec.train, bf16=rec.train.bf16 and device.type == "cuda" and _bf16_ok(device),
                        bf16_logits=rec.train.bf16_logits and _bf16_ok(device),
                        time_budget_s=training_budget(
                            rec.train.time_budget_s, built,
                            refresh_s=model.text.refresh_s if model.text is not None else 0.0))
    validate = None
    if train_cfg.patience > 0 and world.main:
        validate = validation_score(split, candidates_of(split, len(dataset.item_ids)), device)
    result = train(model, split.train, train_cfg, device=device, progress=progress,
                   validate=validate, world=world)
    return Fitted(model=model, seconds=time.monotonic() - started, epochs=result.epochs,
                  best_epoch=result.best_epoch, losses=tuple(result.losses),
                  validation=tuple(result.validation))


def training_budget(total_s: float, built_s: float, *, refresh_s: float) -> float:
    """Seconds left for the training loop of a `total_s` budget after building the model
    took `built_s` (the text cache and its first pooling), with `refresh_s` set aside
    for pooling every item's text again after training (what the first pooling took; 0
    without text). At least one second (one step)."""
    return max(1.0, total_s - built_s - refresh_s)


def candidates_of(split: Split, n_items: int) -> np.ndarray:
    """bool [n_items]: the items some event of the data set names."""
    occurs = np.zeros(n_items + 1, dtype=bool)
    occurs[split.full.items] = True
    return occurs[1:]


def validation_score(
    split: Split, candidates: np.ndarray, device: torch.device
) -> Callable[[TwoTower], float]:
    """model -> NDCG@10 on the validation targets, seen items excluded."""
    users = split.eval_users
    ends = split.full.lengths()[users] - 2

    def score(model: TwoTower) -> float:
        out = evaluate_scorer(model_scorer(model, split.full, device, bf16=_bf16_ok(device)),
                              users, ends, split.valid_targets, seqs=split.full,
                              candidates=candidates, progress=False)
        return out["seen_excluded"]["ndcg@10"]

    return score


def _bf16_ok(device: torch.device) -> bool:
    return use_bf16(device, "auto")


def split_dataset(dataset: Dataset) -> Split:
    return leave_last_out(build_sequences(dataset.events, dataset.item_rows()))


def compare(
    dataset: Dataset, names: Sequence[str], *, text_model_dir: Path | None,
    time_budget_s: float, device: torch.device, progress: bool = True, seed: int = 0,
    budgets: dict[str, float] | None = None, patience: int = 0,
    on_result: Callable[[dict[str, Any]], None] | None = None, max_epochs: int | None = None,
    world: World = SINGLE,
) -> dict[str, Any]:
    """Train and test every named model on the leave-last-out split of `dataset`.

    `budgets` overrides `time_budget_s` per model name; `patience` > 0 early-stops the
    learned models on validation NDCG@10. Returns ``{"protocol": ..., "models": {name:
    {metrics..., "train_seconds", "peak_rss_mb", ...}} (seen items excluded),
    "unfiltered": {name: {...}} (nothing excluded), "trained": {name: TwoTower}}``;
    `on_result(result so far)` is called after each model, so no finished model's
    figures are lost when a later one fails. `max_epochs` caps the recipes' epochs.

    With a distributed `world` every rank trains the learned models together; the main
    rank alone fits the baselines, tests, and calls `on_result` (the others return no
    figures).
    """
    split = split_dataset(dataset)
    n_items = len(dataset.item_ids)
    candidates = candidates_of(split, n_items)
    users = split.eval_users
    ends = split.full.lengths()[users] - 1  # the model sees everything before the target
    log.info("%s: %s users, %s catalog rows (%s occur), %s events, %s evaluated users",
             dataset.name, split.full.n_users, n_items, int(candidates.sum()),
             len(dataset.events), len(users))
    result: dict[str, Any] = {
        "protocol": {
            "split": "leave-last-out per user (last = test, second to last = validation)",
            "candidates": "every item some event names (catalog rows no event names are "
                          "never candidates)",
            "excluded": {"models": "the user's history items before the target (unless "
                                   "one is the target): SASRec+ / gSASRec's protocol",
                         "unfiltered": "nothing (HSTU's evaluation code)"},
            "users": int(len(users)),
            "items": int(candidates.sum()),
            "catalog_rows": n_items,
            "events": len(dataset.events),
            "threads": torch.get_num_threads(),
            "device": str(device),
            "ranks": world.size,
        },
        "models": {}, "unfiltered": {}, "trained": {},
    }
    for name in names:
        if not world.main and name not in LEARNED:
            continue
        started = time.monotonic()
        extra: dict[str, float] = {}
        with PeakRss() as peak:
            if name == "popular":
                score = popular_scorer(split.train, n_items)
            elif name == "item-knn":
                score = item_knn_scorer(split.train, split.full, n_items)
            else:
                budget = (budgets or {}).get(name, time_budget_s)
                rec = recipe(name, n_items, time_budget_s=budget, seed=seed, patience=patience)
                if max_epochs is not None:
                    rec = replace(rec, train=replace(rec.train, epochs=max_epochs))
                fitted = fit(rec, dataset, split, text_model_dir=text_model_dir, device=device,
                             progress=progress, world=world)
                if not world.main:
                    continue
                result["trained"][name] = fitted.model
                extra = {"epochs": fitted.epochs, "best_epoch": fitted.best_epoch}
                score = model_scorer(fitted.model, split.full, device, bf16=_bf16_ok(device))
            seconds = time.monotonic() - started
            out = evaluate_scorer(score, users, ends, split.test_targets, seqs=split.full,
                                  candidates=candidates, desc=f"test {name}",
                                  progress=progress)
        for protocol, key in (("seen_excluded", "models"), ("unfiltered", "unfiltered")):
            figures = {k: round(v, 4) for k, v in out[protocol].items() if k != "candidates"}
            result[key][name] = {**figures,
                                 "train_seconds": round(seconds, 1), **extra,
                                 "peak_rss_mb": peak.mb}
        result["protocol"]["ranked_per_user"] = {  # mean; the same for every model
            "seen_excluded": round(out["seen_excluded"]["candidates"], 1),
            "unfiltered": round(out["unfiltered"]["candidates"], 1)}
        log.info("%s: seen excluded %s; unfiltered %s", name, result["models"][name],
                 result["unfiltered"][name])
        if on_result is not None:
            on_result(result)
    return result
