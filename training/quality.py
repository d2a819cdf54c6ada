"""Full-catalog next-item evaluation (the SASRec / BERT4Rec / HSTU protocol) and the
baselines scored by the same code.

Leave-last-out per user: the newest event is the test target, the one before it the
validation target, the model sees everything before the target. Every item of the
catalog is a candidate (no sampled negatives) and nothing is excluded, not even items
the user already interacted with -- as in HSTU's evaluation code, which ranks the whole
catalog without filtering history. Equal scores rank by item row, lower first.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from contracts.console import progress_bar
from training.sequences import Sequences, windows
from training.train import TwoTower, to_tensors

KS = (10, 50)
Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (users, ends) -> [B, n_items]


def ranks_of(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of column ``targets[b] - 1`` in row b of `scores` [B, n_items]."""
    columns = targets - 1
    target = scores.gather(1, columns[:, None])
    ahead = scores > target
    ties = (scores == target) & (
        torch.arange(scores.shape[1], device=scores.device)[None, :] < columns[:, None]
    )
    return 1 + (ahead | ties).sum(1)


def metrics(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """HR@k and NDCG@k (one relevant item) for each k, and MRR."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    if len(ranks) == 0:
        return {**{f"{m}@{k}": 0.0 for k in ks for m in ("hr", "ndcg")}, "mrr": 0.0}
    for k in ks:
        hit = ranks <= k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
    out["mrr"] = float((1.0 / ranks).mean())
    return out


def evaluate_scorer(
    score: Scorer, users: np.ndarray, ends: np.ndarray, targets: np.ndarray, *,
    batch_size: int = 256, desc: str = "eval", progress: bool = True,
) -> dict[str, float]:
    """Metrics of `score` predicting ``targets[i]`` from events ``[0, ends[i])`` of user
    ``users[i]``."""
    ranks = []
    for first in progress_bar(range(0, len(users), batch_size), desc=desc, enabled=progress):
        sl = slice(first, first + batch_size)
        scores = torch.as_tensor(score(users[sl], ends[sl]))
        ranks.append(ranks_of(scores, torch.as_tensor(targets[sl])).numpy())
    return metrics(np.concatenate(ranks) if ranks else np.array([]))


def model_scorer(
    model: TwoTower, seqs: Sequences, device: torch.device, bf16: bool = True
) -> Scorer:
    """Cosine of the user vector after the events before the target with every item."""
    model.eval()
    with torch.no_grad():
        table = model.item_table().to(device)

    @torch.no_grad()
    def score(users: np.ndarray, ends: np.ndarray) -> np.ndarray:
        t = to_tensors(windows(seqs, users, ends, model.cfg.max_len), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            vectors = model.user(table[t["items"]], t["event_types"], t["gaps_s"], t["mask"])
        return (vectors.float() @ table[1:].T).cpu().numpy()

    return score


def popular_scorer(train: Sequences, n_items: int) -> Scorer:
    """Interaction count in the training events, the same for every user."""
    counts = np.bincount(train.items, minlength=n_items + 1)[1:].astype(np.float32)

    def score(users: np.ndarray, ends: np.ndarray) -> np.ndarray:
        return np.broadcast_to(counts, (len(users), n_items)).copy()

    return score


def item_knn_scorer(
    train: Sequences, seqs: Sequences, n_items: int, *, recent: int = 20, shrink: float = 10.0
) -> Scorer:
    """Item-kNN on user-level co-occurrence: cosine similarity of item columns of the
    binary user x item matrix of the training events (shrunk by `shrink`), summed over
    the user's `recent` newest items before the target."""
    users_of = np.repeat(np.arange(train.n_users), train.lengths())
    x = torch.zeros(train.n_users, n_items + 1)
    x[torch.from_numpy(users_of), torch.from_numpy(train.items)] = 1.0
    x = x[:, 1:]
    co = x.T @ x  # [n_items, n_items]
    counts = torch.diagonal(co).clone()
    sim = co / (torch.sqrt(counts[:, None] * counts[None, :]) + shrink).clamp(min=1e-9)
    sim.fill_diagonal_(0.0)
    sim_np = sim.numpy()

    def score(users: np.ndarray, ends: np.ndarray) -> np.ndarray:
        out = np.zeros((len(users), n_items), dtype=np.float32)
        for b, (u, e) in enumerate(zip(users, ends)):
            items, _, _ = seqs.user(int(u))
            history = items[max(0, int(e) - recent) : int(e)] - 1
            out[b] = sim_np[history].sum(0)
        return out

    return score
