"""Full-catalog next-item evaluation (the SASRec / BERT4Rec / HSTU protocol) and the
baselines scored by the same code.

Leave-last-out per user: the newest event is the test target, the one before it the
validation target, the model sees everything before the target. Candidates are the
items that occur in the data set (catalog rows no event names are never candidates),
no sampled negatives. Two protocols, scored from the same scores:
- ``seen_excluded``: the items of the user's history before the target are not
  candidates (unless one is the target) -- SASRec+ / gSASRec's protocol, and what
  serving does;
- ``unfiltered``: nothing excluded, history items stay candidates (HSTU's code).
Equal scores rank by item row, lower first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from scipy import sparse

from contracts.console import progress_bar
from training.memory import release_free_memory
from training.sequences import Sequences, windows
from training.model import TwoTower
from training.train import to_tensors

KS = (10, 50)
Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (users, ends) -> [B, n_items]


PROTOCOLS = ("seen_excluded", "unfiltered")


def ranks_of(
    scores: torch.Tensor, targets: torch.Tensor, excluded: torch.Tensor | None = None
) -> torch.Tensor:
    """1-based rank of column ``targets[b] - 1`` in row b of `scores` [B, n_items] among
    the columns `excluded` (bool [B, n_items], optional) leaves; the target column is
    always a candidate."""
    columns = targets - 1
    target = scores.gather(1, columns[:, None])
    ahead = scores > target
    ties = (scores == target) & (
        torch.arange(scores.shape[1], device=scores.device)[None, :] < columns[:, None]
    )
    beaten = ahead | ties
    if excluded is not None:
        beaten &= ~excluded  # the target's own column is never "ahead" of itself
    return 1 + beaten.sum(1)


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


def seen_mask(seqs: Sequences, users: np.ndarray, ends: np.ndarray, n_items: int) -> torch.Tensor:
    """bool [B, n_items]: the items of events ``[0, ends[b])`` of user ``users[b]``."""
    mask = torch.zeros(len(users), n_items, dtype=torch.bool)
    for b, (u, e) in enumerate(zip(users.tolist(), ends.tolist(), strict=True)):
        a = int(seqs.starts[u])
        mask[b, torch.from_numpy(seqs.items[a : a + int(e)] - 1)] = True
    return mask


def evaluate_scorer(
    score: Scorer, users: np.ndarray, ends: np.ndarray, targets: np.ndarray, *,
    seqs: Sequences, candidates: np.ndarray | None = None, batch_size: int = 256,
    desc: str = "eval", progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Metrics of `score` predicting ``targets[i]`` from events ``[0, ends[i])`` of user
    ``users[i]`` of `seqs`, under each of `PROTOCOLS`. `candidates` (bool [n_items], all
    by default) marks the items that can be ranked; each protocol's ``candidates`` entry
    is the mean number of items it ranked per user."""
    ranks: dict[str, list[np.ndarray]] = {p: [] for p in PROTOCOLS}
    counts: dict[str, list[np.ndarray]] = {p: [] for p in PROTOCOLS}
    never = None if candidates is None else ~torch.as_tensor(candidates, dtype=torch.bool)
    for first in progress_bar(range(0, len(users), batch_size), desc=desc, enabled=progress):
        sl = slice(first, first + batch_size)
        scores = torch.as_tensor(score(users[sl], ends[sl]))
        target = torch.as_tensor(targets[sl])
        rows = torch.arange(len(target))
        base = torch.zeros_like(scores, dtype=torch.bool) if never is None else never.expand(
            scores.shape).clone()
        seen = base | seen_mask(seqs, users[sl], ends[sl], scores.shape[1])
        for name, excluded in (("seen_excluded", seen), ("unfiltered", base)):
            excluded[rows, target - 1] = False
            ranks[name].append(ranks_of(scores, target, excluded).numpy())
            counts[name].append((~excluded).sum(1).numpy())
        del scores, base, seen, excluded
        release_free_memory()  # the blocks of this batch, or the next ones pile up
    out = {}
    for name in PROTOCOLS:
        found = np.concatenate(ranks[name]) if ranks[name] else np.array([])
        ranked = np.concatenate(counts[name]) if counts[name] else np.array([0])
        out[name] = {**metrics(found), "candidates": float(ranked.mean())}
    return out


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
    train: Sequences, seqs: Sequences, n_items: int, *, recent: int = 20, shrink: float = 10.0,
    neighbours: int = 100, max_block_pairs: int = 1 << 24,
) -> Scorer:
    """Item-kNN on user-level co-occurrence: cosine similarity of item columns of the
    binary user x item matrix of the training events (shrunk by `shrink`), each item
    keeping its `neighbours` most similar items, summed over the user's `recent` newest
    items before the target. Sparse throughout (`item_neighbours`): memory grows with
    the co-occurring pairs of a block of items and with ``n_items * neighbours``, never
    with ``n_items ** 2``."""
    sim = item_neighbours(train, n_items, shrink=shrink, neighbours=neighbours,
                          max_block_pairs=max_block_pairs)

    def score(users: np.ndarray, ends: np.ndarray) -> np.ndarray:
        rows, cols = [], []
        for b, (u, e) in enumerate(zip(users, ends)):
            items, _, _ = seqs.user(int(u))
            history = items[max(0, int(e) - recent) : int(e)] - 1
            rows.append(np.full(len(history), b))
            cols.append(history)
        r = np.concatenate(rows) if rows else np.array([], dtype=np.int64)
        c = np.concatenate(cols) if cols else np.array([], dtype=np.int64)
        # a repeated history item counts once per occurrence (duplicates are summed)
        recent_items = sparse.csr_matrix((np.ones(len(r), np.float32), (r, c)),
                                         shape=(len(users), n_items))
        return (recent_items @ sim).toarray().astype(np.float32)

    return score


def user_item_matrix(train: Sequences, n_items: int) -> sparse.csr_matrix:
    """float32 binary [users, n_items] CSR: whether the user has an event of the item."""
    users_of = np.repeat(np.arange(train.n_users), train.lengths())
    x = sparse.csr_matrix((np.ones(len(users_of), np.float32), (users_of, train.items - 1)),
                          shape=(train.n_users, n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def similarity_blocks(
    x: sparse.csr_matrix, *, shrink: float, max_block_pairs: int
) -> Iterator[tuple[int, sparse.csr_matrix]]:
    """(first item, CSR [block items, n_items]) of the shrunk cosine ``co / (sqrt(n_i
    n_j) + shrink)``, the diagonal left out, a block of consecutive items at a time.

    A block holds at most `max_block_pairs` stored entries (or one item): item i's row
    has at most ``sum of |u| over its users u`` entries, and blocks are cut on that bound.
    """
    xt = x.T.tocsr()  # [n_items, users]
    counts = np.asarray(x.sum(0)).ravel()  # users per item
    bound = xt @ np.asarray(x.sum(1)).ravel()  # per item: entries its row can have
    first, n_items = 0, x.shape[1]
    while first < n_items:
        cum = np.cumsum(bound[first:])
        last = first + max(1, int(np.searchsorted(cum, max_block_pairs, side="right")))
        block = (xt[first:last] @ x).tocoo()  # co-occurrence counts
        rows = block.row + first
        keep = rows != block.col
        rows, cols, co = rows[keep], block.col[keep], block.data[keep]
        sim = co / (np.sqrt(counts[rows] * counts[cols]) + shrink)
        yield first, sparse.csr_matrix((sim.astype(np.float32), (rows - first, cols)),
                                       shape=(last - first, n_items))
        first = last


def item_neighbours(
    train: Sequences, n_items: int, *, shrink: float, neighbours: int, max_block_pairs: int
) -> sparse.csr_matrix:
    """float32 [n_items, n_items] CSR: each item's `neighbours` highest similarities
    (`similarity_blocks`; equal ones by lower item first)."""
    parts = []
    for _, block in similarity_blocks(user_item_matrix(train, n_items), shrink=shrink,
                                      max_block_pairs=max_block_pairs):
        coo = block.tocoo()
        order = np.lexsort((coo.col, -coo.data, coo.row))  # by row, best first
        rows, cols, sims = coo.row[order], coo.col[order], coo.data[order]
        starts = np.searchsorted(rows, np.arange(block.shape[0]))
        rank = np.arange(len(rows)) - starts[rows]
        top = rank < neighbours
        parts.append(sparse.csr_matrix((sims[top], (rows[top], cols[top])), shape=block.shape))
    if not parts:
        return sparse.csr_matrix((n_items, n_items), dtype=np.float32)
    return sparse.vstack(parts, format="csr")
