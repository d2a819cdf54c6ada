"""A synthetic follow graph over a data set's users with a planted, documented effect.

No public data set with a social graph ships in a package this project can install, so
the social source is measured on a graph made here (``python -m training social-graph``):

- **Out-degree**: user u follows ``d_u = clip(round(f · X_u), 1, n - 1)`` others, X_u
  log-normal with mean 1 (σ = `degree_sigma`), so degrees spread around `f`.
- **Fame**: every user has a weight ``w_v ~ Pareto(fame_alpha) + 1``; a followee is
  drawn with probability proportional to it, so in-degrees are heavy-tailed (a few
  accounts are followed by very many).
- **The planted effect**: each edge is, with probability `signal`, drawn among the
  `neighbours` users of most similar taste to the follower, else among all users (both
  by fame). Taste is the cosine of users' rows of the training split's user x item
  matrix reduced by a truncated SVD (`taste_vectors`): a user's held-out (validation and
  test) items never choose who they follow.
- **Controls**: ``signal = 0`` (random follows, the same degrees in expectation) and
  `shuffle`, a degree-preserving rewiring of a graph (every follower keeps their
  out-degree and every followee their in-degree; the taste structure is gone).

Edges are unique, never self-follows, all of kind ``follow``, stamped `created_ms`, and a
fraction `named` of them carry ``share_name`` (the followee may be named in reasons). The
file is the edge list ``python -m ingest relations`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse.linalg import svds

from training.sequences import Sequences

COLUMNS = ("follower_id", "followee_id", "kind", "timestamp", "share_name")


@dataclass(frozen=True)
class GraphConfig:
    """What a generated graph looks like (see the module docstring)."""

    follows: float = 20.0  # f: mean out-degree
    signal: float = 0.5  # fraction of follows chosen among users of similar taste
    neighbours: int = 50  # users of most similar taste a taste follow is drawn from
    degree_sigma: float = 0.8  # spread of the log-normal out-degree
    fame_alpha: float = 1.2  # Pareto shape of the fame weights (smaller: heavier tail)
    taste_dim: int = 32  # SVD components of the taste vectors
    named: float = 0.3  # fraction of edges whose followee may be named
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.signal <= 1.0:
            raise ValueError(f"signal is a fraction in [0, 1], not {self.signal}")
        if not 0.0 <= self.named <= 1.0:
            raise ValueError(f"named is a fraction in [0, 1], not {self.named}")
        if self.follows < 1:
            raise ValueError(f"follows (the mean out-degree) is at least 1, not {self.follows}")
        if self.neighbours < 1 or self.taste_dim < 1:
            raise ValueError("neighbours and taste_dim are at least 1")


@dataclass(frozen=True)
class Graph:
    """Directed edges between user indices: ``followers[e]`` follows ``followees[e]``."""

    n_users: int
    followers: np.ndarray  # int64 [edges]
    followees: np.ndarray  # int64 [edges]
    named: np.ndarray  # bool [edges]

    def out_degrees(self) -> np.ndarray:
        return np.bincount(self.followers, minlength=self.n_users)

    def in_degrees(self) -> np.ndarray:
        return np.bincount(self.followees, minlength=self.n_users)

    def following(self) -> list[np.ndarray]:
        """Per user, the indices of the users they follow (ascending)."""
        order = np.lexsort((self.followees, self.followers))
        starts = np.r_[0, np.cumsum(self.out_degrees())]
        sorted_followees = self.followees[order]
        return [sorted_followees[starts[u]:starts[u + 1]] for u in range(self.n_users)]


def taste_vectors(train: Sequences, n_items: int, dim: int, seed: int) -> np.ndarray:
    """float32 [users, dim]: unit rows of the truncated SVD of the binary user x item
    matrix of `train` (rows scaled to unit length first); a user without training
    events gets a zero row."""
    users_of = np.repeat(np.arange(train.n_users), train.lengths())
    x = sparse.csr_matrix((np.ones(len(users_of), np.float64), (users_of, train.items - 1)),
                          shape=(train.n_users, n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    norms = np.sqrt(np.asarray(x.sum(1)).ravel())
    x = sparse.diags(1.0 / np.maximum(norms, 1.0)) @ x
    k = max(1, min(dim, min(x.shape) - 1))
    u, s, _ = svds(x, k=k, random_state=seed)
    vectors = u * s
    length = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(length > 0, length, 1.0)).astype(np.float32)


def nearest_users(vectors: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """int64 [users, k]: each user's `k` most similar other users (cosine), best first."""
    n = len(vectors)
    k = min(k, n - 1)
    out = np.empty((n, k), dtype=np.int64)
    for first in range(0, n, block):
        sims = vectors[first:first + block] @ vectors.T  # [block, users]
        rows = np.arange(sims.shape[0])
        sims[rows, first + rows] = -np.inf  # never oneself
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        out[first:first + block] = np.take_along_axis(top, order, axis=1)
    return out


def generate(taste: np.ndarray, cfg: GraphConfig) -> Graph:
    """A follow graph over the users of `taste` ([users, dim] unit rows) by `cfg`."""
    n = len(taste)
    if n < 2:
        raise ValueError("a follow graph needs at least two users")
    rng = np.random.default_rng(cfg.seed)
    sigma = cfg.degree_sigma
    spread = rng.lognormal(-sigma * sigma / 2, sigma, n)  # mean 1
    degrees = np.clip(np.rint(cfg.follows * spread), 1, n - 1).astype(np.int64)
    fame = rng.pareto(cfg.fame_alpha, n) + 1.0
    near = nearest_users(taste, cfg.neighbours) if cfg.signal > 0 else None
    everyone = fame / fame.sum()
    followers, followees = [], []
    for u in range(n):
        d = int(degrees[u])
        n_taste = int(rng.binomial(d, cfg.signal)) if near is not None else 0
        chosen: list[int] = []
        if n_taste and near is not None:
            pool = near[u]
            weights = fame[pool] / fame[pool].sum()
            chosen = rng.choice(pool, size=min(n_taste, len(pool)), replace=False,
                                p=weights).tolist()
        taken = set(chosen) | {u}
        while len(chosen) < d:  # random follows by fame, none twice, never oneself
            for v in rng.choice(n, size=2 * (d - len(chosen)) + 4, p=everyone).tolist():
                if v not in taken and len(chosen) < d:
                    taken.add(v)
                    chosen.append(v)
        followers.append(np.full(len(chosen), u, dtype=np.int64))
        followees.append(np.asarray(chosen, dtype=np.int64))
    follower = np.concatenate(followers)
    return Graph(n, follower, np.concatenate(followees), rng.random(len(follower)) < cfg.named)


def shuffle(graph: Graph, seed: int, max_rounds: int = 100) -> Graph:
    """The degree-preserving control: the followee ends of all edges permuted (every
    follower keeps their out-degree, every followee their in-degree), then each edge
    that became a self-follow or a repeat swapped with a random other edge until none is
    left. ValueError when `max_rounds` of swaps do not clear them (a tiny, dense graph)."""
    rng = np.random.default_rng(seed)
    src = graph.followers
    dst = graph.followees[rng.permutation(len(src))]
    for _ in range(max_rounds):
        bad = _bad_edges(src, dst, graph.n_users)
        if not bad.any():
            return Graph(graph.n_users, src.copy(), dst, graph.named.copy())
        for e in np.flatnonzero(bad):
            o = int(rng.integers(len(src)))
            dst[e], dst[o] = dst[o], dst[e]
    raise ValueError(f"no degree-preserving shuffle found in {max_rounds} rounds")


def _bad_edges(src: np.ndarray, dst: np.ndarray, n: int) -> np.ndarray:
    """bool [edges]: a self-follow, or a repeat of an earlier edge."""
    codes = src * n + dst
    _, first = np.unique(codes, return_index=True)
    repeat = np.ones(len(codes), dtype=bool)
    repeat[first] = False
    return (src == dst) | repeat


def taste_share(graph: Graph, near: np.ndarray) -> float:
    """The fraction of edges whose followee is among the follower's `near` users: the
    planted effect as it can be measured on a graph."""
    if len(graph.followers) == 0:
        return 0.0
    width = near.shape[1]
    hits = (near[graph.followers] == graph.followees[:, None]).any(1)
    return float(hits.sum()) / len(graph.followers) if width else 0.0


def to_frame(graph: Graph, user_ids: list[str], created_ms: int) -> pd.DataFrame:
    """The edge list as ``python -m ingest relations`` reads it."""
    ids = np.asarray(user_ids, dtype=object)
    return pd.DataFrame({
        "follower_id": ids[graph.followers], "followee_id": ids[graph.followees],
        "kind": "follow", "timestamp": np.full(len(graph.followers), created_ms, np.int64),
        "share_name": np.where(graph.named, "true", "false"),
    }, columns=list(COLUMNS))


def write(frame: pd.DataFrame, path: Path) -> None:
    """CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``, ``.pq``) by the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.lower().endswith((".parquet", ".pq")):
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)


def read(path: Path, user_index: dict[str, int]) -> Graph:
    """An edge list (the columns `to_frame` writes; rows marked ``removed`` dropped) over
    the users of `user_index`; edges naming another user are left out."""
    name = path.name.lower()
    frame = (pd.read_parquet(path) if name.endswith((".parquet", ".pq"))
             else pd.read_csv(path, dtype=str, keep_default_na=False))
    if "removed" in frame:
        frame = frame[~frame["removed"].astype(str).str.lower().isin({"true", "t", "yes", "y", "1"})]
    src = frame["follower_id"].astype(str).map(user_index)
    dst = frame["followee_id"].astype(str).map(user_index)
    keep = (src.notna() & dst.notna()).to_numpy()
    named = (frame["share_name"].astype(str).str.lower().isin({"true", "t", "yes", "y", "1"})
             .to_numpy() if "share_name" in frame else np.zeros(len(frame), dtype=bool))
    return Graph(len(user_index), src[keep].to_numpy(np.int64), dst[keep].to_numpy(np.int64),
                 named[keep])
