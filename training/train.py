"""The training loop: next-item prediction at every position of each user's sequence.

Objectives (``TrainConfig.loss``):
- ``ce``: softmax cross-entropy over the whole catalog. Used when the catalog is small
  enough that a ``[positions, items]`` logit block fits a step (``full_ce_max_items``,
  default 50k items: 25k positions x 50k x 2 bytes = 2.5 GB in bf16); it is the
  strongest objective for next-item prediction (SASRec trained this way beats
  BCE-with-one-negative by a wide margin).
- ``sampled``: softmax over the batch's targets (in-batch negatives) plus uniformly
  sampled items, for large catalogs; picked automatically above the limit.
- ``bce``: one random negative per position, the original SASRec objective (baseline).

On several processes (``torchrun``, ``training.distributed``) the loop is data-parallel:
every rank draws the same shuffled batches and trains on its share of each
(:func:`shard`), so the global batch, the steps per epoch and the learning rate are
those of one process; DistributedDataParallel averages the gradients, weighted so the
step's loss is the mean over all ranks' positions (:func:`share_weight`).
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from contracts.console import progress_bar
from training.distributed import SINGLE, World
from training.model import ModelConfig, TwoTower
from training.sequences import PAD, Sequences, Window, epoch_batches, training_batch

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """How to train; saved inside every checkpoint next to the ModelConfig."""

    epochs: int = 200
    time_budget_s: float = 1800.0  # stop after this many seconds; the LR decay follows it
    batch_size: int = 128
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine (warm-up, then decay; see lr_factor) | constant
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0  # 0 = no clipping
    loss: str = "auto"  # auto | ce | sampled | bce
    full_ce_max_items: int = 50_000
    n_negatives: int = 1024  # uniform negatives of the sampled softmax
    label_smoothing: float = 0.0
    crop_prob: float = 0.0
    id_dropout: float = 0.1  # drop an item's id part so its text part learns to stand alone
    text_items_per_step: int = 64  # items whose text tower runs with gradients per step
    text_lr: float = 5e-5
    seed: int = 0
    # autocast the whole step (CUDA only; on a CPU it gains nothing). Off by default: on an
    # H200 the shipped recipe's step took 152 ms autocast against 16 ms in fp32
    # (bench/train_speed.py --device cuda)
    bf16: bool = False
    bf16_logits: bool = True  # the [positions, items] logits and their softmax in bf16
    patience: int = 0  # with a validation score: stop after this many worse checks (0 = never)
    # with patience: when it runs out, go back to the best check's weights and decay the LR
    # to min_lr_ratio over this many epochs before stopping (0 = stop at once). The decay
    # before it then follows the steps only, not the clock (the budget is a cap), so an
    # early-stopped run is the same run on a busy machine or a quiet one
    anneal_epochs: int = 0
    validate_every: int = 1  # epochs between validation checks
    # length: users of similar history length share a batch (little padding); random:
    # any users share a batch (SASRec+'s draws; each batch padded to its longest history)
    batching: str = "length"

    def __post_init__(self) -> None:
        if self.batching not in ("length", "random"):
            raise ValueError(f"batching must be 'length' or 'random', not {self.batching!r}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))  # a list after a checkpoint

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_factor(
    step: int, total: int, warmup: int, min_ratio: float, spent: float = 0.0,
    schedule: str = "cosine",
) -> float:
    """Linear warm-up to 1, then cosine decay to `min_ratio` at `total` steps -- or
    sooner: `spent` is the fraction of the time budget used, and the decay follows
    whichever of the two is further along, so a time-limited run ends annealed however
    fast or busy the machine is (at the cost of step-exact reproducibility).
    ``schedule="constant"`` is 1 throughout (SASRec's recipe)."""
    if schedule == "constant":
        return 1.0
    if schedule not in ("cosine",):
        raise ValueError(f"schedule must be 'cosine' or 'constant', not {schedule!r}")
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), spent))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def anneal_factor(step: int, start: int, length: int, start_factor: float,
                  min_ratio: float) -> float:
    """The rate of the final decay after a plateau: cosine from `start_factor` at step
    `start` to `min_ratio` at ``start + length`` (and after)."""
    progress = min(1.0, max(0.0, (step - start) / max(1, length)))
    low = min(min_ratio, start_factor)
    return low + (start_factor - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def pick_loss(requested: str, n_items: int, limit: int) -> str:
    if requested != "auto":
        return requested
    return "ce" if n_items <= limit else "sampled"


def next_item_loss(
    kind: str, states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
    temperature: float, *, label_smoothing: float = 0.0, n_negatives: int = 0,
    generator: torch.Generator | None = None, bf16_logits: bool = False,
) -> torch.Tensor:
    """Mean loss of predicting `targets` (item rows >= 1, [P]) from `states` ([P, D])
    against the item `table` ([n_items + 1, D], row 0 padding).

    `bf16_logits` computes the full-CE logit block and its softmax in bf16: on a CPU
    with native bf16 that block is most of a step and runs ~2.5x faster, and the
    gradient stays within 1e-5 (cosine) of fp32's.
    """
    n_items = table.shape[0] - 1
    if kind == "ce":
        scaled = states / temperature  # scale the small side
        if bf16_logits:
            logits = scaled.bfloat16() @ table[1:].bfloat16().T  # [P, n_items]
        else:
            logits = scaled @ table[1:].T
        return F.cross_entropy(logits, targets - 1, label_smoothing=label_smoothing).float()
    if kind == "sampled":
        batch_items = torch.unique(targets)  # in-batch negatives (every target)
        sampled = torch.randint(1, n_items + 1, (n_negatives,), generator=generator,
                                device=targets.device)
        candidates = torch.cat([batch_items, sampled])
        logits = (states @ table[candidates].T / temperature).float()  # [P, C]
        label = torch.searchsorted(batch_items, targets)
        accidental = candidates[None, :] == targets[:, None]
        accidental[torch.arange(len(targets)), label] = False
        logits = logits.masked_fill(accidental, float("-inf"))
        return F.cross_entropy(logits, label, label_smoothing=label_smoothing)
    if kind == "bce":
        negatives = torch.randint(1, n_items + 1, targets.shape, generator=generator,
                                  device=targets.device)
        pos = (states * table[targets]).sum(-1) / temperature
        neg = (states * table[negatives]).sum(-1) / temperature
        miss = (negatives != targets).to(neg.dtype)  # a negative that is the target is none
        return (F.softplus(-pos) + F.softplus(neg) * miss).mean()
    raise ValueError(f"unknown loss {kind!r}")


def to_tensors(window: Window, device: torch.device) -> dict[str, torch.Tensor]:
    return {
        "items": torch.from_numpy(window.items).to(device),
        "event_types": torch.from_numpy(window.types).to(device),
        "gaps_s": torch.from_numpy(window.gaps_s).to(device),
        "mask": torch.from_numpy(window.mask).to(device),
    }


def batch_inputs(
    seqs: Sequences, users: np.ndarray, max_len: int, rng: np.random.Generator,
    crop_prob: float, device: torch.device,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Inputs and next-item targets (item rows, PAD where none) of a batch of users."""
    window, targets = training_batch(seqs, users, max_len, rng, crop_prob)
    return to_tensors(window, device), torch.from_numpy(targets).to(device)


def live_text_rows(
    model: TwoTower, targets: torch.Tensor, per_step: int, generator: torch.Generator
) -> torch.Tensor | None:
    """Up to `per_step` of the batch's target items, drawn at random: the items whose text
    runs through the fine-tuned layers with gradients this step (None: no text tower)."""
    if model.text is None or per_step <= 0:
        return None
    live = torch.unique(targets[targets != PAD])
    return live[torch.randperm(len(live), generator=generator, device=live.device)[:per_step]]


def id_keep(
    seen: torch.Tensor, cfg: TrainConfig, mcfg: ModelConfig, generator: torch.Generator
) -> torch.Tensor:
    """float [n_items + 1]: 1 where an item's id part is used this step -- seen in
    training and not dropped (`id_dropout`, so its text part learns to stand alone)."""
    keep = seen.float()
    if cfg.id_dropout > 0 and mcfg.use_ids and mcfg.use_text:
        keep = keep * (torch.rand(keep.shape, generator=generator, device=keep.device)
                       >= cfg.id_dropout)
    return keep


def batch_loss(
    model: TwoTower, inputs: dict[str, torch.Tensor], targets: torch.Tensor, *, kind: str,
    live: torch.Tensor | None, keep: torch.Tensor, cfg: TrainConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """The item table (text live on `live`), the user state at every position, and the
    mean next-item loss over the positions with a target."""
    with torch.autocast(targets.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        table = model.item_table(live, keep)
        states = model.user.sequence(table[inputs["items"]], inputs["event_types"],
                                     inputs["gaps_s"], inputs["mask"])
        real = targets != PAD
        return next_item_loss(
            kind, states[real], table, targets[real], model.cfg.temperature,
            label_smoothing=cfg.label_smoothing, n_negatives=cfg.n_negatives,
            generator=generator, bf16_logits=cfg.bf16_logits,
        )


def update(
    model: TwoTower, optimizer: torch.optim.Optimizer, loss: torch.Tensor, *, factor: float,
    grad_clip: float,
) -> None:
    """One optimiser step on `loss`, every group at ``base_lr * factor``, gradients clipped
    to norm `grad_clip` (0: not clipped)."""
    for group in optimizer.param_groups:
        group["lr"] = float(group["base_lr"]) * factor
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def shard(batch: np.ndarray, world: World, rank: int | None = None) -> np.ndarray:
    """Rank `rank`'s (default: this rank's) share of a batch: every ``world.size``-th
    user from its rank on. Batches are sorted by history length, so the shares are alike
    in width; a batch smaller than the world gives the ranks past its end one of its
    users again (every rank takes a step, so no all-reduce waits for a missing one)."""
    rank = world.rank if rank is None else rank
    share = batch[rank :: world.size]
    return share if len(share) else batch[rank % len(batch) :][:1]


def share_weight(batch: np.ndarray, widths: np.ndarray, world: World) -> float:
    """The factor of this rank's mean loss that makes the ranks' averaged gradient the
    gradient of the mean over every rank's positions: ``size * n_rank / n_all``, where a
    user's positions with a target are its window width (`widths`)."""
    if not world.distributed:
        return 1.0
    counts = [int(widths[shard(batch, world, r)].sum()) for r in range(world.size)]
    return world.size * counts[world.rank] / max(1, sum(counts))


class StepLoss(nn.Module):
    """:func:`batch_loss` as a module's forward, what DistributedDataParallel wraps: its
    gradient hooks are armed by a call through the wrapper."""

    def __init__(self, model: TwoTower, *, kind: str, cfg: TrainConfig,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.model = model
        self.kind, self.cfg, self.generator = kind, cfg, generator

    def forward(self, inputs: dict[str, torch.Tensor], targets: torch.Tensor,
                live: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor:
        return batch_loss(self.model, inputs, targets, kind=self.kind, live=live, keep=keep,
                          cfg=self.cfg, generator=self.generator)


def data_parallel(step: StepLoss, world: World) -> nn.Module:
    """`step` itself on one process; wrapped in DistributedDataParallel on several.
    Buffers are not broadcast per step (the text tower's cache is kept in step by
    :func:`sync_text_cache`, the rest never changes); unused parameters are looked for
    because a recipe may leave some out of the loss (an ID-only model's event-type and
    gap embeddings) and the text tower's layers sit out a step without live rows."""
    if not world.distributed:
        return step
    # torch >= 2.13 names the per-step buffer sync `forward_sync_buffers` (and still
    # syncs buffers once at the start; they are equal on every rank, so it changes nothing)
    sync = ("forward_sync_buffers"
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else "broadcast_buffers")
    options: dict[str, Any] = {sync: False, "find_unused_parameters": True}
    return DistributedDataParallel(step, **options)


def sync_text_cache(model: TwoTower, live: torch.Tensor | None, per_step: int,
                    world: World) -> None:
    """Write every rank's freshly computed text rows into this rank's cache, so each
    rank's cache holds what one process's would (the top layers are equal on all)."""
    if model.text is None or live is None or not world.distributed:
        return
    rows, values = world.gather_rows(live, model.text.pooled[live], per_step)
    model.text.pooled[rows] = values


def rank_seed(seed: int, world: World) -> int:
    """Seed of this rank's own draws (crops, live text rows, id and model dropout,
    negatives): `seed` on one process, distinct per rank on several."""
    if not world.distributed:
        return seed
    return int(np.random.SeedSequence([seed, world.rank]).generate_state(1)[0])


@dataclass
class TrainResult:
    model: TwoTower
    steps: int
    epochs: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    validation: list[tuple[int, float]] = field(default_factory=list)  # (epoch, score)
    best_epoch: int = 0  # the epoch whose weights the model has (0: the last)


def train(
    model: TwoTower, train_seqs: Sequences, cfg: TrainConfig, *, device: torch.device,
    progress: bool = True, on_epoch: Any = None,
    validate: Callable[[TwoTower], float] | None = None, world: World = SINGLE,
) -> TrainResult:
    """Train in place; returns the model and the loss per epoch.

    Each step: the batch's inputs and targets (:func:`batch_inputs`), the items whose
    text runs with gradients (:func:`live_text_rows`) and whose id part is kept
    (:func:`id_keep`), the loss (:func:`batch_loss`), the update at the scheduled rate
    (:func:`update`, :func:`lr_factor`) with the model's own parameter groups
    (``TwoTower.configure_optimizers``).

    `on_epoch(epoch, model)` is called after each epoch. With `validate` (model -> a
    score, higher is better, e.g. validation NDCG@10), every ``cfg.validate_every``
    epochs are scored, training stops after ``cfg.patience`` checks without a new best
    (early stopping; 0 = train on), and the model ends with the best check's weights.
    With ``cfg.anneal_epochs`` the run out of patience first goes back to the best
    check's weights and decays its rate over that many epochs (:func:`anneal_factor`),
    still scored, and stops at the end of it.

    With a distributed `world` every rank calls this with the same model, data and
    config: `rng` (the batches) is the same on all, each rank's own draws are its own
    (:func:`rank_seed`); the main rank alone decides when the time budget is spent, runs
    `on_epoch` and `validate`, and the ranks stop together; only its model has the best
    check's weights and the refreshed text cache.
    """
    rng = seed_everything(cfg.seed)
    own_seed = rank_seed(cfg.seed, world)
    torch.manual_seed(own_seed)
    batch_rng = rng if not world.distributed else np.random.default_rng(own_seed)
    generator = torch.Generator(device=device).manual_seed(own_seed)
    mcfg = model.cfg
    kind = pick_loss(cfg.loss, mcfg.n_items, cfg.full_ce_max_items)
    model.to(device)
    seen = np.zeros(mcfg.n_items + 1, dtype=bool)
    seen[train_seqs.items] = True
    seen_t = torch.from_numpy(seen).to(device)
    model.warm.copy_(seen_t.float())
    users = np.flatnonzero(train_seqs.lengths() >= 2)
    widths = np.minimum(train_seqs.lengths()[users] - 1, mcfg.max_len)  # input slots per user
    steps_per_epoch = math.ceil(len(users) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    optimizer = model.configure_optimizers(weight_decay=cfg.weight_decay, lr=cfg.lr,
                                           betas=cfg.betas, text_lr=cfg.text_lr)
    step_loss = data_parallel(StepLoss(model, kind=kind, cfg=cfg, generator=generator), world)
    log.info("training %s users, %s steps/epoch, loss %s, device %s, bf16 %s, %s rank(s)",
             len(users), steps_per_epoch, kind, device, cfg.bf16, world.size)
    started = time.monotonic()
    step, epoch, losses, stop, spent = 0, 0, [], False, 0.0
    checks: list[tuple[int, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None  # score, epoch, weights
    annealing = cfg.anneal_epochs > 0 and cfg.patience > 0  # the same on every rank
    anneal: tuple[int, float, int] | None = None  # first step, its rate, last epoch
    factor = 1.0
    bar = progress_bar(total=total, desc="train", unit="step", enabled=progress and world.main)
    for epoch in range(1, cfg.epochs + 1):
        step_loss.train()
        epoch_loss, epoch_steps = 0.0, 0
        batches = epoch_batches(len(users), cfg.batch_size, rng,
                                lengths=widths if cfg.batching == "length" else None)
        for batch in batches:
            # the random draws keep their order (batch, live rows, id dropout, negatives),
            # so a seed gives the same run
            share = shard(batch, world)
            inputs, targets = batch_inputs(train_seqs, users[share], mcfg.max_len, batch_rng,
                                           cfg.crop_prob, device)
            live = live_text_rows(model, targets, cfg.text_items_per_step, generator)
            keep = id_keep(seen_t, cfg, mcfg, generator)
            loss = step_loss(inputs, targets, live, keep)
            # the main rank's clock: the LR and the stop are the same on every rank
            spent = world.broadcast_float((time.monotonic() - started) / cfg.time_budget_s)
            weight = share_weight(batch, widths, world)
            if anneal is not None:
                factor = anneal_factor(step, anneal[0], cfg.anneal_epochs * steps_per_epoch,
                                       anneal[1], cfg.min_lr_ratio)
            else:
                factor = lr_factor(step, total, cfg.warmup_steps, cfg.min_lr_ratio,
                                   0.0 if annealing else spent, cfg.schedule)
            update(model, optimizer, loss * weight if weight != 1.0 else loss,
                   grad_clip=cfg.grad_clip, factor=factor)
            sync_text_cache(model, live, cfg.text_items_per_step, world)
            step += 1
            epoch_loss += float(loss.detach())
            epoch_steps += 1
            bar.update(1)
            if spent >= 1.0:
                stop = True
                break
        losses.append(world.mean_float(epoch_loss / max(1, epoch_steps)))  # over the ranks
        if 0 < spent < 1:  # the steps the time budget will allow, at the pace so far
            bar.total = min(total, int(step / spent))
        bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.3f}")
        early = plateau = False
        if on_epoch is not None and world.main:
            on_epoch(epoch, model)
        if validate is not None and world.main and (epoch % cfg.validate_every == 0 or stop):
            score = float(validate(model))
            checks.append((epoch, score))
            log.info("epoch %s: loss %.4f, validation %.4f", epoch, losses[-1], score)
            if best is None or score > best[0]:
                weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best = (score, epoch, weights)
            elif (anneal is None and cfg.patience
                  and len(checks) - 1 - _index_of(checks, best[1]) >= cfg.patience):
                plateau = annealing
                early = not annealing
                if annealing:
                    log.info("plateau after epoch %s: back to epoch %s (%.4f), the rate "
                             "decays over %s epochs", epoch, best[1], best[0], cfg.anneal_epochs)
                else:
                    log.info("early stop after epoch %s: best %.4f at epoch %s",
                             epoch, *best[:2])
        # the main rank's decisions (the others wait here): decay from the best, or stop
        if annealing and anneal is None and world.broadcast_flag(plateau):
            if best is not None:
                model.load_state_dict(best[2])
            world.broadcast_module(model)
            anneal = (step, factor, epoch + cfg.anneal_epochs)
        elif anneal is not None and epoch >= anneal[2]:
            log.info("the decay after the plateau ended with epoch %s", epoch)
            early = True
        if world.broadcast_flag(early):
            break
        if stop:
            log.info("time budget of %.0f s reached after %s epochs", cfg.time_budget_s, epoch)
            break
    bar.close()
    world.barrier()  # every rank leaves training together
    if best is not None:
        model.load_state_dict(best[2])
    model.eval()
    if model.text is not None and world.main:
        model.text.refresh()
    return TrainResult(model=model, steps=step, epochs=epoch,
                       seconds=time.monotonic() - started, losses=losses, validation=checks,
                       best_epoch=best[1] if best is not None else 0)


def _index_of(checks: list[tuple[int, float]], epoch: int) -> int:
    return next(i for i, (e, _) in enumerate(checks) if e == epoch)
