"""Does a social feature in the user's representation help on the synthetic graph?

Item-kNN (``training.quality``'s: each item's 100 nearest, summed over the user's 20
newest items) with the followees' 20 newest items before the test event appended as
context, each weighted ``λ / followees``: the kNN analogue of blending the user vector
with the mean of the followees'. Leave-last-out on MovieLens-1M, seen excluded, on the
planted graph (``training.socialgraph`` defaults) and its degree-preserving shuffle.

    PYTHONPATH=. .venv/bin/python bench/social_context.py   # ~3 minutes on two cores
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import sparse

from training import socialgraph
from training.__main__ import movielens_dir
from training.data import read_recbole
from training.offline import candidates_of
from training.quality import Scorer, evaluate_scorer, item_neighbours
from training.sequences import Sequences
from training.socialcmd import split_of

RESULTS = Path(__file__).resolve().parent / "results" / "social_context.json"
RECENT = 20
LAMBDAS = (0.0, 0.1, 0.3, 1.0)


def context_scorer(seqs: Sequences, sim: sparse.csr_matrix, following: list[np.ndarray],
                   lam: float) -> Scorer:
    """Item-kNN over the user's newest items plus λ / followees of each followee's newest
    items before the user's next event."""
    n_items = sim.shape[0]

    def score(users: np.ndarray, ends: np.ndarray) -> np.ndarray:
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        for b, (u, e) in enumerate(zip(users.tolist(), ends.tolist(), strict=True)):
            a = int(seqs.starts[u])
            own = seqs.items[a + max(0, e - RECENT):a + e] - 1
            rows += [b] * len(own)
            cols += own.tolist()
            vals += [1.0] * len(own)
            followees = following[u]
            if lam == 0 or len(followees) == 0:
                continue
            now = seqs.times_s[a + e]
            for v in followees.tolist():
                first, last = int(seqs.starts[v]), int(seqs.starts[v + 1])
                before = np.flatnonzero(seqs.times_s[first:last] < now)[-RECENT:]
                theirs = seqs.items[first + before] - 1
                rows += [b] * len(theirs)
                cols += theirs.tolist()
                vals += [lam / len(followees)] * len(theirs)
        context = sparse.csr_matrix((np.array(vals, np.float32), (rows, cols)),
                                    shape=(len(users), n_items))
        return (context @ sim).toarray()

    return score


def main() -> None:
    dataset = read_recbole(movielens_dir())
    split = split_of(dataset)
    n_items = len(dataset.item_ids)
    sim = item_neighbours(split.train, n_items, shrink=10.0, neighbours=100,
                          max_block_pairs=1 << 24)
    cfg = socialgraph.GraphConfig()
    taste = socialgraph.taste_vectors(split.train, n_items, cfg.taste_dim, cfg.seed)
    planted = socialgraph.generate(taste, cfg)
    graphs = {"planted (signal 0.5)": planted,
              "shuffled planted": socialgraph.shuffle(planted, seed=cfg.seed + 1)}
    users = split.eval_users
    ends = split.full.lengths()[users] - 1
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, graph in graphs.items():
        following = graph.following()
        results[name] = {}
        for lam in LAMBDAS:
            out = evaluate_scorer(context_scorer(split.full, sim, following, lam), users, ends,
                                  split.test_targets, seqs=split.full,
                                  candidates=candidates_of(split, n_items), progress=False)
            seen = out["seen_excluded"]
            results[name][str(lam)] = {"hr@10": round(seen["hr@10"], 4),
                                       "ndcg@10": round(seen["ndcg@10"], 4)}
            print(f"{name:<22} λ {lam:<4} HR@10 {seen['hr@10']:.4f} NDCG@10 {seen['ndcg@10']:.4f}",
                  flush=True)
    RESULTS.write_text(json.dumps({"synthetic": "follow graphs from training.socialgraph",
                                   "model": "item-knn + followees' items as context",
                                   "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
