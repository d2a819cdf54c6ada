"""Leave-last-out evaluation on tiny, hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.evaluate import (
    evaluate,
    leave_last_out,
    ranking_metrics,
    ranks_of_targets,
    user_vectors,
)


def test_rank_counts_higher_scores_and_lower_columns_on_ties() -> None:
    scores = np.array([[0.9, 0.5, 0.7, 0.1], [0.5, 0.5, 0.5, 0.5]])
    none = np.zeros_like(scores, dtype=bool)
    assert ranks_of_targets(scores, np.array([2, 1]), none).tolist() == [2, 2]


def test_rank_skips_excluded_items_but_never_the_target() -> None:
    scores = np.array([[0.9, 0.5, 0.7, 0.1]])
    excluded = np.array([[True, False, True, False]])
    assert ranks_of_targets(scores, np.array([2]), excluded).tolist() == [1]
    assert ranks_of_targets(scores, np.array([3]), excluded).tolist() == [2]


def test_ranking_metrics() -> None:
    metrics = ranking_metrics(np.array([1, 2, 11]), k=10)
    assert metrics["hr@10"] == pytest.approx(2 / 3)
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert metrics["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 11) / 3)
    assert ranking_metrics(np.array([], dtype=np.int64), k=5) == {
        "hr@5": 0.0, "ndcg@5": 0.0, "mrr": 0.0
    }


def test_leave_last_out_orders_by_time_then_log_order() -> None:
    users = ["u1", "u2", "u1", "u1", "u3", "u2"]
    timestamps = np.array([1, 5, 3, 3, 1, 2])
    held = leave_last_out(users, timestamps, max_history=10)
    assert held.targets.tolist() == [3, 1]  # u1's tie at t=3 keeps log order; u3 skipped
    assert held.history.tolist() == [0, 2, 5]
    assert held.history_starts.tolist() == [0, 2, 3]
    newest = leave_last_out(users, timestamps, max_history=1)
    assert newest.history.tolist() == [2, 5]
    first_user = leave_last_out(users, timestamps, max_history=10, max_users=1)
    assert first_user.targets.tolist() == [3]


def test_user_vectors_weighted_mean_with_uniform_fallback() -> None:
    items = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    weighted = user_vectors(items, np.array([0, 1]), np.array([3.0, 1.0]), np.array([0, 2]))
    np.testing.assert_allclose(weighted, [[3 / math.sqrt(10), 1 / math.sqrt(10)]], rtol=1e-6)
    zero = user_vectors(items, np.array([0, 1]), np.array([0.0, 0.0]), np.array([0, 2]))
    np.testing.assert_allclose(zero, [[1 / math.sqrt(2), 1 / math.sqrt(2)]], rtol=1e-6)


def test_evaluate_model_and_popular_baseline() -> None:
    vectors = np.array(
        [[1, 0, 0, 0], [0.8, 0.6, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32
    )  # rows: A, B, C, D
    users = ["u1", "u1", "u2", "u2", "u2"]
    items = np.array([0, 1, 2, 3, 1])  # u1: A then B; u2: C, D then B
    timestamps = np.array([1, 2, 1, 2, 3])
    held = leave_last_out(users, timestamps, max_history=10)
    metrics = evaluate(held, items, np.ones(5, dtype=np.float32), vectors, k=1)
    # model: u1 ranks B first (A excluded); u2 scores A and B 0, A's lower row wins -> 2
    assert metrics["model"] == pytest.approx({"hr@1": 0.5, "ndcg@1": 0.5, "mrr": 0.75})
    # popular (counts outside targets: A1 B0 C1 D1): u1 -> B behind C, D = 3; u2 -> behind A = 2
    assert metrics["popular"] == pytest.approx({"hr@1": 0.0, "ndcg@1": 0.0, "mrr": (1 / 3 + 1 / 2) / 2})
    assert metrics["users"] == 2 and metrics["k"] == 1
