"""Leave-last-out evaluation of the item vectors and a most-popular baseline.

Each user's events are ordered by time (ties keep log order); the last one is held out
and the ones before it are the history. The model scores every item by the dot product
with the user vector, the weighted mean of the newest `max_history` history items'
vectors (uniform weights when a user's weights do not sum to a positive number). The
baseline scores items by their interaction count outside the held-out events. Items in
the user's history are not candidates, unless one is the held-out item. Equal scores
rank by catalog row, as a stable top-k would. Users with one event are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

_SCORE_CELLS_PER_CHUNK = 1 << 22  # bounds the [users, items] score block in memory


@dataclass(frozen=True)
class HeldOut:
    """Per evaluated user: the held-out event and the history before it.

    Indices point into the event arrays given to `leave_last_out`;
    ``history[history_starts[u]:history_starts[u + 1]]`` is user u's history, oldest first.
    """

    targets: np.ndarray
    history: np.ndarray
    history_starts: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.targets)


def leave_last_out(
    user_ids: Sequence[str],
    timestamps_ms: np.ndarray,
    *,
    max_history: int,
    max_users: int | None = None,
) -> HeldOut:
    """Split events (in log order) into one held-out event and a history per user.

    With `max_users`, the first users to appear in the log are kept.
    """
    count = len(user_ids)
    codes, _ = pd.factorize(pd.Series(user_ids, dtype=object), sort=False)
    order = np.lexsort((np.arange(count), np.asarray(timestamps_ms), codes))
    grouped = codes[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]]) if count else grouped
    ends = np.r_[starts[1:], count].astype(np.int64)
    keep = (ends - starts) >= 2
    if max_users is not None:
        keep &= grouped[starts] < max_users  # codes number users by first appearance
    starts, ends = starts[keep], ends[keep]
    targets = order[ends - 1]
    history_from = np.maximum(starts, ends - 1 - max_history)
    pieces = [order[a:b] for a, b in zip(history_from.tolist(), (ends - 1).tolist(), strict=True)]
    lengths = np.array([len(piece) for piece in pieces], dtype=np.int64)
    return HeldOut(
        targets=targets,
        history=np.concatenate(pieces) if pieces else np.array([], dtype=np.int64),
        history_starts=np.r_[0, np.cumsum(lengths)].astype(np.int64),
    )


def ranks_of_targets(scores: np.ndarray, targets: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """1-based rank of each row's target column among the candidate columns.

    `scores` is [users, items]; `excluded` is a bool mask of the same shape (the target
    is always a candidate). Equal scores rank by column, lower first.
    """
    rows = np.arange(len(targets))
    masked = np.where(excluded, -np.inf, scores)
    masked[rows, targets] = scores[rows, targets]
    target_scores = masked[rows, targets][:, None]
    columns = np.arange(scores.shape[1])[None, :]
    ahead = (masked > target_scores) | ((masked == target_scores) & (columns < targets[:, None]))
    return 1 + ahead.sum(axis=1)


def ranking_metrics(ranks: np.ndarray, k: int) -> dict[str, float]:
    """HR@k, NDCG@k (one relevant item) and MRR of 1-based ranks."""
    if len(ranks) == 0:
        return {f"hr@{k}": 0.0, f"ndcg@{k}": 0.0, "mrr": 0.0}
    ranks = ranks.astype(np.float64)
    hits = ranks <= k
    return {
        f"hr@{k}": float(hits.mean()),
        f"ndcg@{k}": float(np.where(hits, 1.0 / np.log2(ranks + 1.0), 0.0).mean()),
        "mrr": float((1.0 / ranks).mean()),
    }


def user_vectors(
    item_vectors: np.ndarray,
    history_items: np.ndarray,
    history_weights: np.ndarray,
    starts: np.ndarray,
) -> np.ndarray:
    """Weighted mean of each user's history item vectors, L2-normalised.

    `starts` has one entry per user plus the end; every history is non-empty.
    """
    weights = history_weights.astype(np.float32)
    weighted = item_vectors[history_items] * weights[:, None]
    sums = np.add.reduceat(weighted, starts[:-1], axis=0)
    totals = np.add.reduceat(weights, starts[:-1])
    uniform = totals <= 0
    if uniform.any():
        plain = np.add.reduceat(item_vectors[history_items], starts[:-1], axis=0)
        sums[uniform] = plain[uniform]
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def evaluate(
    held_out: HeldOut,
    item_rows: np.ndarray,
    weights: np.ndarray,
    item_vectors: np.ndarray,
    *,
    k: int,
) -> dict[str, object]:
    """Metrics of the vectors and of the most-popular baseline on `held_out`.

    `item_rows[e]` is the catalog row of event e, `weights[e]` its weight.
    """
    n_items = item_vectors.shape[0]
    target_rows = item_rows[held_out.targets]
    popularity = np.bincount(item_rows, minlength=n_items) - np.bincount(
        target_rows, minlength=n_items
    )
    chunk = max(1, _SCORE_CELLS_PER_CHUNK // max(n_items, 1))
    model_ranks, popular_ranks = [], []
    for first in range(0, held_out.n_users, chunk):
        last = min(first + chunk, held_out.n_users)
        starts = held_out.history_starts[first : last + 1]
        history = held_out.history[starts[0] : starts[-1]]
        local_starts = starts - starts[0]
        excluded = np.zeros((last - first, n_items), dtype=bool)
        owners = np.repeat(np.arange(last - first), np.diff(local_starts))
        excluded[owners, item_rows[history]] = True
        targets = target_rows[first:last]
        users = user_vectors(item_vectors, item_rows[history], weights[history], local_starts)
        model_ranks.append(ranks_of_targets(users @ item_vectors.T, targets, excluded))
        popular = np.broadcast_to(popularity.astype(np.float64), excluded.shape)
        popular_ranks.append(ranks_of_targets(popular, targets, excluded))
    model = np.concatenate(model_ranks) if model_ranks else np.array([], dtype=np.int64)
    baseline = np.concatenate(popular_ranks) if popular_ranks else np.array([], dtype=np.int64)
    return {
        "protocol": "leave_last_out",
        "k": k,
        "users": held_out.n_users,
        "model": ranking_metrics(model, k),
        "popular": ranking_metrics(baseline, k),
    }
