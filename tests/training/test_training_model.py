"""The towers, the losses and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.model import ItemTable, ModelConfig, TwoTower, UserTower, gap_buckets, \
    pair_buckets
from training.train import (
    TrainConfig,
    id_keep,
    live_text_rows,
    lr_factor,
    next_item_loss,
    pick_loss,
)


def test_gap_buckets_use_the_previous_event_only() -> None:
    # seconds before the newest event, oldest first; slot 0 is padding
    gaps = torch.tensor([[0.0, 100.0, 97.0, 0.0]])
    mask = torch.tensor([[False, True, True, True]])
    # own gaps: first real -> none (0), then 3 s -> floor(log2 4) + 1 = 3, 97 s -> 7 + 1
    assert gap_buckets(gaps, mask).tolist() == [[0, 0, 3, 7]]


def _tower(**overrides: object) -> UserTower:
    torch.manual_seed(0)
    return UserTower(ModelConfig(n_items=10, dim=8, max_len=6, n_heads=2, **overrides)).eval()


def _inputs(batch: int = 2, length: int = 6) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(1)
    vectors = F.normalize(torch.randn(batch, length, 8), dim=-1)
    types = torch.full((batch, length), 5)
    gaps = torch.arange(length, 0, -1).float().repeat(batch, 1) * 60
    mask = torch.ones(batch, length, dtype=torch.bool)
    return vectors, types, gaps, mask


def _assert_causal(tower: UserTower) -> None:
    vectors, types, gaps, mask = _inputs()
    before = tower.sequence(vectors, types, gaps, mask)
    changed = vectors.clone()
    changed[:, -1] = F.normalize(torch.randn(2, 8), dim=-1)
    after = tower.sequence(changed, types, gaps, mask)
    assert torch.allclose(before[:, :-1], after[:, :-1], atol=1e-6)
    assert not torch.allclose(before[:, -1], after[:, -1])


def test_user_tower_is_causal() -> None:
    _assert_causal(_tower())
    _assert_causal(_tower(time_bias=True))


def test_pair_buckets_are_the_log2_time_from_the_older_event() -> None:
    gaps = torch.tensor([[100.0, 97.0, 0.0]])  # seconds before the newest event
    buckets = pair_buckets(gaps)
    # from event 0 to 1: 3 s -> floor(log2 4) = 2; to 2: 100 s -> 6; later events: 0
    assert buckets.tolist() == [[[0, 0, 0], [2, 0, 0], [6, 6, 0]]]


def test_a_time_bias_starts_as_plain_attention_and_then_moves_the_vectors() -> None:
    plain, biased = _tower(), _tower(time_bias=True)
    biased.load_state_dict({**plain.state_dict(),
                            "time_bias.weight": biased.state_dict()["time_bias.weight"]})
    vectors, types, gaps, mask = _inputs(batch=3)
    mask[0, :4] = False
    with torch.no_grad():
        assert torch.allclose(biased(vectors, types, gaps, mask),
                              plain(vectors, types, gaps, mask), atol=1e-6)
        assert biased.time_bias is not None
        biased.time_bias.weight.normal_()
        newest = biased(vectors, types, gaps, mask)
        assert not torch.allclose(newest, plain(vectors, types, gaps, mask), atol=1e-4)
        # the newest-slot-only path gives the sequence's newest state with the bias too
        assert torch.allclose(newest, biased.sequence(vectors, types, gaps, mask)[:, -1],
                              atol=1e-6)


@pytest.mark.parametrize("block", ["pre", "sasrec"])
def test_the_user_vector_is_the_sequences_newest_state(block: str) -> None:
    # forward runs the last block for the newest slot only: the same values
    tower = _tower(block=block)
    vectors, types, gaps, mask = _inputs(batch=3)
    mask[0, :4] = False
    with torch.no_grad():
        newest = tower(vectors, types, gaps, mask)
        every = tower.sequence(vectors, types, gaps, mask)[:, -1]
    assert newest.shape == (3, 8)
    assert torch.allclose(newest, every, atol=1e-6)


def test_user_vector_ignores_padding_content_and_is_normalised() -> None:
    tower = _tower()
    vectors, types, gaps, mask = _inputs()
    mask[:, :2] = False
    out = tower(vectors * mask[..., None], types * mask, gaps * mask, mask)
    noisy = vectors.clone()
    noisy[:, :2] = 5.0  # whatever sits in padded slots
    out_noisy = tower(noisy, types, gaps, mask)
    assert torch.allclose(out, out_noisy, atol=1e-5)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_sasrec_block_is_causal_ignores_padding_and_scores_by_plain_dot() -> None:
    tower = _tower(block="sasrec", score="dot", use_context=False, ffn_mult=1)
    _assert_causal(tower)
    vectors, types, gaps, mask = _inputs()
    mask[:, :2] = False
    out = tower(vectors * mask[..., None], types, gaps, mask)
    noisy = vectors.clone()
    noisy[:, :2] = 5.0
    assert torch.allclose(out, tower(noisy, types, gaps, mask), atol=1e-5)
    assert not torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-3)  # not normalised


@pytest.mark.parametrize("positions", ["newest", "oldest"])
def test_positions_count_from_the_newest_or_from_the_oldest_event(positions: str) -> None:
    tower = _tower(positions=positions)
    _assert_causal(tower)
    vectors, types, gaps, mask = _inputs()
    mask[:, :3] = False  # three events in six slots
    vectors, types, gaps = vectors * mask[..., None], types * mask, gaps * mask
    before = tower(vectors, types, gaps, mask)
    shift = torch.randn(8, generator=torch.Generator().manual_seed(2))  # not a mean shift
    with torch.no_grad():
        tower.positions.weight[-1] += shift  # the slot of the newest event
    moved_last = tower(vectors, types, gaps, mask)
    with torch.no_grad():
        tower.positions.weight[-1] -= shift
        tower.positions.weight[2] += shift  # the third position from the start
    moved_third = tower(vectors, types, gaps, mask)
    # "newest": the newest event always sits at the last position; "oldest": the
    # newest of three events is position 2
    assert torch.allclose(before, moved_last, atol=1e-6) == (positions == "oldest")
    assert torch.allclose(before, moved_third, atol=1e-6) == (positions == "newest")


def test_positions_and_batching_take_known_values_only() -> None:
    with pytest.raises(ValueError, match="positions"):
        ModelConfig(n_items=3, positions="middle")
    with pytest.raises(ValueError, match="batching"):
        TrainConfig(batching="sorted")


def test_dot_item_table_keeps_the_embedding_norms() -> None:
    torch.manual_seed(0)
    table = ItemTable(ModelConfig(n_items=5, dim=8, use_text=False, score="dot"))
    rows = table(None)
    assert torch.equal(rows[0], torch.zeros(8))
    assert torch.allclose(rows[1:], table.ids.weight[1:])


def test_constant_schedule_is_flat() -> None:
    assert [lr_factor(s, 100, 10, 0.05, schedule="constant") for s in (0, 50, 99)] == [1.0] * 3


def test_item_table_rows_are_normalised_and_cold_items_use_text_only() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=3, dim=4, text_dim=5)
    table = ItemTable(cfg)
    text = torch.randn(4, 5)
    warm = torch.tensor([0.0, 1.0, 1.0, 0.0])
    out = table(text, warm)
    assert torch.equal(out[0], torch.zeros(4))
    assert torch.allclose(out[1:].norm(dim=-1), torch.ones(3), atol=1e-6)
    text_only = F.normalize(table.projection(text[3]), dim=-1)
    assert torch.allclose(out[3], text_only, atol=1e-6)


def test_lr_factor_warms_up_then_decays_to_the_floor() -> None:
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(500, 100, 10, 0.1) == pytest.approx(0.1)
    # half the time budget spent after few steps: the decay follows the time
    assert lr_factor(20, 1000, 10, 0.1, spent=0.5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(20, 1000, 10, 0.1, spent=2.0) == pytest.approx(0.1)


def test_full_cross_entropy_matches_the_definition() -> None:
    torch.manual_seed(0)
    table = torch.cat([torch.zeros(1, 4), F.normalize(torch.randn(5, 4), dim=-1)])
    states = F.normalize(torch.randn(3, 4), dim=-1)
    targets = torch.tensor([1, 5, 2])
    loss = next_item_loss("ce", states, table, targets, 0.5)
    logits = states @ table[1:].T / 0.5
    manual = -(logits.log_softmax(-1)[torch.arange(3), targets - 1]).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)


def test_bf16_logits_give_the_fp32_loss_and_gradient() -> None:
    torch.manual_seed(0)
    table = torch.cat([torch.zeros(1, 16), F.normalize(torch.randn(500, 16), dim=-1)])
    targets = torch.randint(1, 501, (300,))
    base = F.normalize(torch.randn(300, 16) + 2 * table[targets], dim=-1)
    grads, losses = [], []
    for bf16 in (False, True):
        states = base.clone().requires_grad_()
        loss = next_item_loss("ce", states, table, targets, 0.05, bf16_logits=bf16)
        loss.backward()
        assert loss.dtype == torch.float32
        losses.append(loss.item())
        grads.append(states.grad.flatten())
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)
    assert F.cosine_similarity(grads[0], grads[1], dim=0).item() > 0.999


def test_sampled_and_bce_losses_are_finite_and_fall_for_the_right_item() -> None:
    table = torch.cat([torch.zeros(1, 3), torch.eye(3)])
    targets = torch.tensor([1, 2, 3])
    right = table[targets]
    wrong = table[torch.tensor([2, 3, 1])]
    for kind in ("sampled", "bce"):
        g = torch.Generator().manual_seed(0)
        good = next_item_loss(kind, right, table, targets, 0.1, n_negatives=8, generator=g)
        g = torch.Generator().manual_seed(0)
        bad = next_item_loss(kind, wrong, table, targets, 0.1, n_negatives=8, generator=g)
        assert math.isfinite(good.item()) and good < bad


def test_pick_loss_switches_to_sampled_for_large_catalogs() -> None:
    assert pick_loss("auto", 1000, 50_000) == "ce"
    assert pick_loss("auto", 100_000, 50_000) == "sampled"
    assert pick_loss("bce", 10, 50_000) == "bce"


def _two_tower(text: nn.Module | None = None, **overrides: object) -> TwoTower:
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=10, dim=8, max_len=6, n_heads=2, text_dim=4, **overrides)
    return TwoTower(cfg, text)  # type: ignore[arg-type]


def test_optimizer_decays_only_matrices_and_embeddings_and_runs_text_at_its_rate() -> None:
    text = nn.Linear(4, 4)  # stands in for the text tower's fine-tuned layers
    model = _two_tower(text)
    optimizer = model.configure_optimizers(weight_decay=0.01, lr=2e-3, betas=(0.9, 0.98),
                                           text_lr=5e-5)
    groups = [(g["lr"], g["base_lr"], g["weight_decay"], g["params"])
              for g in optimizer.param_groups]
    assert [(lr, base, decay) for lr, base, decay, _ in groups] == [
        (2e-3, 2e-3, 0.01), (2e-3, 2e-3, 0.0), (5e-5, 5e-5, 0.01), (5e-5, 5e-5, 0.0)]
    assert optimizer.defaults["betas"] == (0.9, 0.98)
    decayed = {id(p) for _, _, decay, params in groups if decay for p in params}
    named = dict(model.named_parameters())
    assert {n for n, p in named.items() if id(p) in decayed} == {
        n for n, p in named.items() if p.dim() >= 2}
    assert "items.ids.weight" in {n for n, p in named.items() if id(p) in decayed}
    assert not {id(p) for p in text.parameters()} & {id(p) for p in groups[0][3] + groups[1][3]}
    every = [id(p) for *_, params in groups for p in params]
    assert sorted(every) == sorted(id(p) for p in model.parameters())  # each exactly once


def test_optimizer_of_an_id_only_model_has_no_text_groups() -> None:
    model = _two_tower(use_text=False)
    model.items.ids.weight.requires_grad_(False)  # a frozen parameter is left out
    optimizer = model.configure_optimizers(weight_decay=0.0, lr=1e-3, betas=(0.9, 0.999),
                                           text_lr=5e-5)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-3]
    assert all(p is not model.items.ids.weight for g in optimizer.param_groups
               for p in g["params"])


def test_live_text_rows_are_some_of_the_batch_targets() -> None:
    targets = torch.tensor([[0, 3, 3, 5], [0, 0, 7, 9]])
    generator = torch.Generator().manual_seed(0)
    live = live_text_rows(_two_tower(nn.Linear(4, 4)), targets, 3, generator)
    assert live is not None and len(live) == 3 and set(live.tolist()) <= {3, 5, 7, 9}
    assert live_text_rows(_two_tower(nn.Linear(4, 4)), targets, 0, generator) is None
    assert live_text_rows(_two_tower(use_text=False), targets, 3, generator) is None


def test_id_keep_drops_seen_items_only_when_the_model_has_text_to_fall_back_on() -> None:
    seen = torch.tensor([False] + [True] * 2000)
    generator = torch.Generator().manual_seed(0)
    cfg = ModelConfig(n_items=2000)
    keep = id_keep(seen, TrainConfig(id_dropout=0.5), cfg, generator)
    assert keep[0] == 0 and 0.4 < float(keep[1:].mean()) < 0.6
    unchanged = seen.float().tolist()
    assert id_keep(seen, TrainConfig(id_dropout=0.0), cfg, generator).tolist() == unchanged
    id_only = ModelConfig(n_items=2000, use_text=False)
    assert id_keep(seen, TrainConfig(id_dropout=0.5), id_only, generator).tolist() == unchanged

