"""Early stopping on a validation score: when it stops, and which weights it keeps."""

from __future__ import annotations

import numpy as np
import torch

from training.model import ModelConfig, TwoTower
from training.sequences import Interactions, build_sequences
from training.train import TrainConfig, train


def _sequences():
    users, items, times = [], [], []
    for u in range(12):
        for t in range(8):
            users.append(f"u{u}")
            items.append(f"i{(u + t) % 6}")
            times.append(t)
    events = Interactions(
        user_ids=np.array(users, dtype=object), item_ids=np.array(items, dtype=object),
        timestamps_ms=np.array(times, dtype=np.int64), event_types=np.ones(len(users), np.int64),
    )
    return build_sequences(events, {f"i{k}": k + 1 for k in range(6)})


def _model() -> TwoTower:
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=6, dim=8, max_len=6, n_blocks=1, n_heads=1, use_text=False,
                      use_context=False, score="dot", block="sasrec", temperature=1.0)
    return TwoTower(cfg, None)


def test_stops_after_patience_checks_without_a_best_and_keeps_the_best_weights() -> None:
    scores = iter([0.1, 0.5, 0.3, 0.2, 0.9, 0.9])
    snapshots: list[dict[str, torch.Tensor]] = []

    def validate(model: TwoTower) -> float:
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    model = _model()
    cfg = TrainConfig(epochs=6, batch_size=4, lr=1e-2, schedule="constant", grad_clip=0.0,
                      weight_decay=0.0, patience=2, bf16=False, bf16_logits=False)
    result = train(model, _sequences(), cfg, device=torch.device("cpu"), progress=False,
                   validate=validate)
    # best at epoch 2; epochs 3 and 4 are two checks without a better score: stop
    assert result.epochs == 4 and result.best_epoch == 2
    assert result.validation == [(1, 0.1), (2, 0.5), (3, 0.3), (4, 0.2)]
    kept = model.state_dict()
    assert all(torch.equal(kept[k], snapshots[1][k]) for k in kept)
    assert not all(torch.equal(kept[k], snapshots[3][k]) for k in kept)


def test_validates_every_few_epochs_and_trains_on_without_patience() -> None:
    model = _model()
    cfg = TrainConfig(epochs=6, batch_size=4, lr=1e-2, patience=0, validate_every=3,
                      bf16=False, bf16_logits=False)
    result = train(model, _sequences(), cfg, device=torch.device("cpu"), progress=False,
                   validate=lambda m: 0.0)
    assert result.epochs == 6
    assert [epoch for epoch, _ in result.validation] == [3, 6]


def test_a_plateau_goes_back_to_the_best_weights_and_decays_the_rate_before_it_stops(
) -> None:
    scores = iter([0.1, 0.5, 0.3, 0.2, 0.4, 0.6, 0.55, 0.1, 0.1, 0.1])
    after_epoch: list[torch.Tensor] = []
    rates: list[float] = []
    before_step: list[torch.Tensor] = []
    model = _model()
    first = next(model.parameters())

    def on_epoch(epoch: int, m: TwoTower) -> None:
        after_epoch.append(first.detach().clone())

    cfg = TrainConfig(epochs=10, batch_size=4, lr=1e-2, schedule="cosine", warmup_steps=0,
                      min_lr_ratio=0.1, grad_clip=0.0, weight_decay=0.0, patience=2,
                      anneal_epochs=3, bf16=False, bf16_logits=False)
    optimizer_step = torch.optim.AdamW.step

    def spy(self: torch.optim.Optimizer, *args: object, **kwargs: object) -> object:
        rates.append(self.param_groups[0]["lr"])
        before_step.append(first.detach().clone())
        return optimizer_step(self, *args, **kwargs)

    torch.optim.AdamW.step = spy  # type: ignore[method-assign]
    try:
        result = train(model, _sequences(), cfg, device=torch.device("cpu"), progress=False,
                       validate=lambda m: next(scores), on_epoch=on_epoch)
    finally:
        torch.optim.AdamW.step = optimizer_step  # type: ignore[method-assign]
    # best at 2; 3 and 4 are worse: back to epoch 2's weights, decay over epochs 5-7, stop
    assert result.epochs == 7 and result.best_epoch == 6
    assert [e for e, _ in result.validation] == [1, 2, 3, 4, 5, 6, 7]
    per_epoch = len(rates) // 7
    assert torch.equal(before_step[4 * per_epoch], after_epoch[1])
    assert not torch.equal(after_epoch[3], after_epoch[1])
    assert 0.6 * cfg.lr < rates[4 * per_epoch - 1] <= rates[4 * per_epoch]  # decay from there
    decay = rates[4 * per_epoch:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert decay[-1] < 0.2 * cfg.lr


def test_without_anneal_epochs_patience_stops_at_once() -> None:
    model = _model()
    scores = iter([0.5, 0.1, 0.1, 0.9])
    cfg = TrainConfig(epochs=6, batch_size=4, lr=1e-2, patience=2, anneal_epochs=0,
                      bf16=False, bf16_logits=False)
    result = train(model, _sequences(), cfg, device=torch.device("cpu"), progress=False,
                   validate=lambda m: next(scores))
    assert result.epochs == 3
