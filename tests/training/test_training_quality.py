"""Full-catalog ranking metrics and the baselines, on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.quality import (
    evaluate_scorer,
    item_knn_scorer,
    metrics,
    popular_scorer,
    ranks_of,
)
from training.sequences import Interactions, build_sequences


def test_ranks_count_higher_scores_and_earlier_ties() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.5], [1.0, 1.0, 1.0, 0.0]])
    # targets are item rows (1-based): row 3 is column 2
    assert ranks_of(scores, torch.tensor([3, 2])).tolist() == [2, 2]
    assert ranks_of(scores, torch.tensor([4, 1])).tolist() == [3, 1]


def test_metrics_on_hand_computed_ranks() -> None:
    out = metrics(np.array([1, 3, 20, 100]), ks=(10, 50))
    assert out["hr@10"] == pytest.approx(0.5)
    assert out["ndcg@10"] == pytest.approx((1.0 + 1.0 / math.log2(4)) / 4)
    assert out["hr@50"] == pytest.approx(0.75)
    assert out["ndcg@50"] == pytest.approx((1.0 + 0.5 + 1.0 / math.log2(21)) / 4)
    assert out["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 20 + 1 / 100) / 4)
    assert metrics(np.array([]))["hr@10"] == 0.0


def _seqs() -> tuple:
    rows = [("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("v", "a", 1), ("v", "b", 2),
            ("w", "c", 1), ("w", "c", 2)]
    events = Interactions(
        user_ids=np.array([r[0] for r in rows], dtype=object),
        item_ids=np.array([r[1] for r in rows], dtype=object),
        timestamps_ms=np.array([r[2] for r in rows], dtype=np.int64),
        event_types=np.ones(len(rows), dtype=np.int64),
    )
    return build_sequences(events, {"a": 1, "b": 2, "c": 3, "d": 4})


def test_popular_scores_training_counts() -> None:
    seqs = _seqs()
    score = popular_scorer(seqs, 4)
    assert score(np.array([0, 1]), np.array([1, 1])).tolist() == [[2, 2, 3, 0]] * 2
    # target d (row 4) never seen: behind the three seen items
    out = evaluate_scorer(score, np.array([0]), np.array([3]), np.array([4]), progress=False)
    assert out["mrr"] == pytest.approx(1 / 4)


def test_item_knn_prefers_co_occurring_items() -> None:
    seqs = _seqs()
    score = item_knn_scorer(seqs, seqs, 4, recent=1, shrink=0.0)
    # u's newest before the end 1 is a; a co-occurs with b in u and v, with c only in u
    row = score(np.array([0]), np.array([1]))[0]
    assert row[0] == 0.0  # an item is not its own neighbour
    assert row[1] == pytest.approx(2 / math.sqrt(2 * 2))
    assert row[2] == pytest.approx(1 / math.sqrt(2 * 2))
    assert row[3] == 0.0
