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
    # target d (row 4) never seen: behind the three seen items...
    out = evaluate_scorer(score, np.array([0]), np.array([3]), np.array([4]), seqs=seqs,
                          progress=False)
    assert out["unfiltered"]["mrr"] == pytest.approx(1 / 4)
    # ...which are u's history, so not candidates when seen items are excluded
    assert out["seen_excluded"]["mrr"] == pytest.approx(1.0)
    assert out["seen_excluded"]["candidates"] == 1.0
    assert out["unfiltered"]["candidates"] == 4.0


def test_ranks_skip_excluded_columns_but_never_the_target() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6]])
    excluded = torch.tensor([[True, False, True, False], [True, True, True, False]])
    # row 0: target column 3 behind 0.8 only; row 1: target column 1 is excluded by the
    # mask yet stays a candidate (only column 3 left behind it)
    assert ranks_of(scores, torch.tensor([4, 2]), excluded).tolist() == [2, 1]


def test_seen_excluded_metrics_on_hand_made_histories() -> None:
    seqs = _seqs()
    # u: a b c; v: a b; w: c c. Every user scores items a > b > c > d.
    def score(users: np.ndarray, ends: np.ndarray) -> np.ndarray:
        return np.tile(np.array([4.0, 3.0, 2.0, 1.0], dtype=np.float32), (len(users), 1))

    users, ends = np.array([0, 1, 2]), np.array([2, 1, 1])
    targets = np.array([3, 2, 3])  # u: c after a b; v: b after a; w: c again after c
    out = evaluate_scorer(score, users, ends, targets, seqs=seqs, progress=False)
    # nothing excluded: ranks 3, 2, 3
    assert out["unfiltered"]["mrr"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert out["unfiltered"]["ndcg@10"] == pytest.approx((0.5 + 1 / math.log2(3) + 0.5) / 3)
    # seen excluded: u ranks c first (a, b seen), v ranks b first (a seen); w's target c
    # was seen but is the target, so it stays a candidate, behind a and b: rank 3
    assert out["seen_excluded"]["mrr"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert out["seen_excluded"]["hr@10"] == pytest.approx(1.0)
    assert out["seen_excluded"]["ndcg@10"] == pytest.approx((1 + 1 + 0.5) / 3)
    # items ranked: u 4 - 2, v 4 - 1, w 4 (its one seen item is the target)
    assert out["seen_excluded"]["candidates"] == pytest.approx((2 + 3 + 4) / 3)


def test_items_no_event_names_are_never_candidates() -> None:
    seqs = _seqs()
    def score(users: np.ndarray, ends: np.ndarray) -> np.ndarray:
        return np.tile(np.array([1.0, 3.0, 2.0, 4.0], dtype=np.float32), (len(users), 1))

    # d (row 4) scores highest but occurs in no event: without it, v's target b is first
    candidates = np.array([True, True, True, False])
    out = evaluate_scorer(score, np.array([1]), np.array([1]), np.array([2]), seqs=seqs,
                          candidates=candidates, progress=False)
    assert out["unfiltered"]["mrr"] == 1.0 and out["unfiltered"]["candidates"] == 3.0
    assert out["seen_excluded"]["mrr"] == 1.0 and out["seen_excluded"]["candidates"] == 2.0


def test_item_knn_prefers_co_occurring_items() -> None:
    seqs = _seqs()
    score = item_knn_scorer(seqs, seqs, 4, recent=1, shrink=0.0)
    # u's newest before the end 1 is a; a co-occurs with b in u and v, with c only in u
    row = score(np.array([0]), np.array([1]))[0]
    assert row[0] == 0.0  # an item is not its own neighbour
    assert row[1] == pytest.approx(2 / math.sqrt(2 * 2))
    assert row[2] == pytest.approx(1 / math.sqrt(2 * 2))
    assert row[3] == 0.0


def test_peak_rss_counts_what_a_block_allocates_above_its_start() -> None:
    from training.memory import PeakRss

    with PeakRss() as peak:
        block = np.ones(32 * 1024 * 1024 // 8)  # 32 MiB, touched
        del block
    assert peak.mb is not None and 30 <= peak.mb < 200
    with PeakRss() as idle:
        pass
    assert idle.mb is not None and idle.mb < 30


def _random_sequences(n_users: int, n_items: int, per_user: int, seed: int):
    rng = np.random.default_rng(seed)
    users = np.repeat([f"u{u}" for u in range(n_users)], per_user)
    items = rng.integers(0, n_items, n_users * per_user)
    events = Interactions(
        user_ids=users.astype(object), item_ids=np.array([f"i{i}" for i in items], dtype=object),
        timestamps_ms=np.tile(np.arange(per_user), n_users).astype(np.int64),
        event_types=np.ones(n_users * per_user, dtype=np.int64),
    )
    return build_sequences(events, {f"i{k}": k + 1 for k in range(n_items)})


def _dense_item_knn(seqs, n_items: int, users, ends, recent: int, shrink: float) -> np.ndarray:
    """The definition, with a dense item x item matrix."""
    x = np.zeros((seqs.n_users, n_items))
    x[np.repeat(np.arange(seqs.n_users), seqs.lengths()), seqs.items - 1] = 1.0
    co = x.T @ x
    counts = np.diag(co).copy()
    sim = co / (np.sqrt(counts[:, None] * counts[None, :]) + shrink)
    np.fill_diagonal(sim, 0.0)
    out = np.zeros((len(users), n_items))
    for b, (u, e) in enumerate(zip(users, ends)):
        items, _, _ = seqs.user(int(u))
        out[b] = sim[items[max(0, e - recent) : e] - 1].sum(0)
    return out


def test_sparse_item_knn_equals_the_dense_definition() -> None:
    seqs = _random_sequences(n_users=30, n_items=17, per_user=9, seed=3)
    users, ends = np.arange(30), np.full(30, 6)
    expected = _dense_item_knn(seqs, 17, users, ends, recent=4, shrink=2.0)
    # every neighbour kept, blocks of a few items: the same numbers as the dense matrix
    score = item_knn_scorer(seqs, seqs, 17, recent=4, shrink=2.0, neighbours=17,
                            max_block_pairs=40)
    np.testing.assert_allclose(score(users, ends), expected, rtol=1e-5, atol=1e-6)
    # with 3 neighbours, each history item adds only its 3 best
    top3 = item_knn_scorer(seqs, seqs, 17, recent=1, shrink=2.0, neighbours=3)(users, ends)
    assert ((top3 > 0).sum(1) <= 3).all()


def test_item_knn_on_100k_items_stays_in_bounded_memory() -> None:
    from training.memory import PeakRss
    from training.quality import similarity_blocks, user_item_matrix

    n_items, limit = 100_000, 200_000
    seqs = _random_sequences(n_users=20_000, n_items=n_items, per_user=10, seed=0)
    x = user_item_matrix(seqs, n_items)
    with PeakRss() as peak:
        blocks = [(first, block.shape, block.nnz)
                  for first, block in similarity_blocks(x, shrink=10.0, max_block_pairs=limit)]
        score = item_knn_scorer(seqs, seqs, n_items, max_block_pairs=limit)
        scores = score(np.arange(256), np.full(256, 10))
    assert sum(shape[0] for _, shape, _ in blocks) == n_items
    assert all(nnz <= limit for _, _, nnz in blocks)  # never a dense item x item block
    assert scores.shape == (256, n_items) and (scores > 0).any()
    # a dense float32 similarity matrix would be 40 GB; this run needs well under 1 GB
    assert peak.mb is not None and peak.mb < 1024



def test_evaluation_hands_each_batchs_freed_blocks_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's [B, n_items] blocks are freed and trimmed before the next batch: on
    20,000 users x 90,000 items they otherwise piled up to +5.6 GB resident."""
    from training import quality

    calls: list[int] = []
    monkeypatch.setattr(quality, "release_free_memory", lambda: calls.append(1))
    seqs = build_sequences(Interactions(
        user_ids=np.array([f"u{u}" for u in range(5) for _ in range(3)], dtype=object),
        item_ids=np.array(["a", "b", "c"] * 5, dtype=object),
        timestamps_ms=np.arange(15, dtype=np.int64),
        event_types=np.zeros(15, dtype=np.int64)), {"a": 1, "b": 2, "c": 3})
    users = np.arange(5)
    quality.evaluate_scorer(lambda u, e: np.zeros((len(u), 3), np.float32), users,
                            np.full(5, 2), np.full(5, 3), seqs=seqs, batch_size=2,
                            progress=False)
    assert len(calls) == 3  # batches of 2, 2 and 1
