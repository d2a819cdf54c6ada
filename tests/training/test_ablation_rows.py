"""The ablation's rows (bench/ablation.py): each is its own change from the anchor, and
each keeps the run's epochs, time budget and patience, so an early-stopped table's rows
stop under the same rule."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.ablation import ROWS
from training import offline

N_ITEMS = 100


def _anchor() -> offline.Recipe:
    rec = offline.recipe("sasrec", N_ITEMS, time_budget_s=321.0, patience=7)
    return replace(rec, train=replace(rec.train, epochs=55))


@pytest.mark.parametrize("name", list(ROWS))
def test_every_row_keeps_the_runs_stopping_rule(name: str) -> None:
    rec = ROWS[name][1](_anchor(), N_ITEMS)
    assert (rec.train.epochs, rec.train.time_budget_s, rec.train.patience) == (55, 321.0, 7)


def test_the_anchor_row_is_the_sasrec_recipe_and_shipped_is_streamrec() -> None:
    assert ROWS["anchor"][1](_anchor(), N_ITEMS) == _anchor()
    shipped = offline.recipe("streamrec", N_ITEMS, time_budget_s=321.0, patience=7)
    assert ROWS["shipped"][1](_anchor(), N_ITEMS) == replace(
        shipped, train=replace(shipped.train, epochs=55))


def test_the_candidates_past_shipped_change_what_they_say() -> None:
    shipped = ROWS["shipped"][1](_anchor(), N_ITEMS)
    random = ROWS["shipped-random"][1](_anchor(), N_ITEMS)
    assert (random.train.batching, random.model.positions) == ("random", "oldest")
    assert replace(random, train=replace(random.train, batching=shipped.train.batching),
                   model=replace(random.model, positions=shipped.model.positions)) == shipped
    assert ROWS["shipped-deep"][1](_anchor(), N_ITEMS).model.n_blocks == 4
    wide = ROWS["shipped-wide"][1](_anchor(), N_ITEMS).model
    assert (wide.dim, wide.n_heads) == (128, 4)
    biased = ROWS["shipped-timebias"][1](_anchor(), N_ITEMS)
    assert biased.model.time_bias and not shipped.model.time_bias
    assert replace(biased, model=replace(biased.model, time_bias=False)) == shipped
