"""The offline check of the social source: does fusing the people-you-follow ranking
into the model's recover a planted taste effect, and cost nothing on a graph without one?

Per test user (leave-last-out, as ``training.quality``; seen items excluded):
- the **model's ranking**: its `model_depth` best items (the serving request's ``k`` plus
  its candidate margin by default) among the candidates, the user's earlier items left
  out;
- the **social ranking**, built as serving builds it (``contracts.social``): every act
  of a followee strictly before the user's test event, one feed member per actor, type
  and item at its newest time, scored by ``feed_score`` with the event type's weight and
  the decay constant, the feed cut to its `feed_limit` best members (the read limit,
  within the feed cap), decayed to the test time by ``decayed_log_weight``, summed per item
  by ``social_items``, the user's earlier items left out;
- the two merged by ``contracts.social.fuse`` at each social weight (0: the model alone).

HR@k and NDCG@k of the test item in the fused top k. The graph is synthetic
(``training.socialgraph``): the check says the fused source recovers an effect planted in
the graph, not that real follow graphs carry one.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contracts.social import (
    DEFAULT_FEED_CAP,
    DEFAULT_TAU_S,
    DEFAULT_TYPE_WEIGHTS,
    Act,
    SocialReadLimits,
    decayed_log_weight,
    fuse,
    social_items,
    type_weights,
)
from training.quality import Scorer
from training.sequences import Split

DEFAULT_WEIGHTS = (0.0, 0.1, 0.2, 0.5, 1.0, 2.0)
DEFAULT_MODEL_DEPTH = 30  # serving fetches k + candidate_margin (20) neighbours


@dataclass(frozen=True)
class CheckConfig:
    """How the check ranks (defaults: serving's)."""

    weights: tuple[float, ...] = DEFAULT_WEIGHTS
    k: int = 10
    model_depth: int = DEFAULT_MODEL_DEPTH
    tau_s: float = DEFAULT_TAU_S
    type_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    feed_limit: int = min(SocialReadLimits().feed, DEFAULT_FEED_CAP)


@dataclass(frozen=True)
class UserCase:
    """One evaluated user: index in the split's sequences, events seen, target row."""

    user: int
    end: int
    target: int


def cases_of(split: Split) -> list[UserCase]:
    ends = split.full.lengths()[split.eval_users] - 1
    return [UserCase(int(u), int(e), int(t))
            for u, e, t in zip(split.eval_users, ends, split.test_targets, strict=True)]


def seen_rows(split: Split, case: UserCase) -> set[int]:
    """Item rows of the user's events before the target, the target itself not among them."""
    a = int(split.full.starts[case.user])
    return set(split.full.items[a:a + case.end].tolist()) - {case.target}


def model_rankings(score: Scorer, split: Split, cases: Sequence[UserCase],
                   candidates: np.ndarray, depth: int, batch_size: int = 256,
                   ) -> list[np.ndarray]:
    """Per case, the model's `depth` best item rows among `candidates` (bool [n_items])
    without the user's earlier items; equal scores by lower row first."""
    out: list[np.ndarray] = []
    for first in range(0, len(cases), batch_size):
        batch = cases[first:first + batch_size]
        users = np.array([c.user for c in batch])
        ends = np.array([c.end for c in batch])
        scores = np.array(score(users, ends), dtype=np.float64, copy=True)
        scores[:, ~candidates] = -np.inf
        for b, case in enumerate(batch):
            seen = np.fromiter(seen_rows(split, case), np.int64)
            scores[b, seen - 1] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
        for b in range(len(batch)):
            rows = order[b][np.isfinite(scores[b, order[b]])]
            out.append(rows + 1)
    return out


def social_ranking(split: Split, case: UserCase, followees: np.ndarray, cfg: CheckConfig,
                   weights: dict[int, float]) -> list[int]:
    """Item rows of the case's social ranking (module docstring), best first."""
    seqs = split.full
    now_s = seqs.times_s[seqs.starts[case.user] + case.end]  # the test event's time
    if len(followees) == 0:
        return []
    parts = [np.arange(seqs.starts[v], seqs.starts[v + 1]) for v in followees.tolist()]
    events = np.concatenate(parts)
    actors = np.repeat(followees, [len(p) for p in parts])
    types = seqs.types[events]
    weight = np.array([weights.get(int(t), 0.0) for t in types])
    keep = (seqs.times_s[events] < now_s) & (weight > 0)
    events, actors, types, weight = events[keep], actors[keep], types[keep], weight[keep]
    if len(events) == 0:
        return []
    tau_ms = cfg.tau_s * 1000.0
    scores = np.log(weight) + seqs.times_s[events] * 1000.0 / tau_ms  # feed_score, vectorised
    items = seqs.items[events]
    member = (actors * 64 + types) * (int(seqs.items.max()) + 1) + items
    order = np.argsort(-scores, kind="stable")
    _, first = np.unique(member[order], return_index=True)  # newest act per feed member
    kept = order[np.sort(first)][:cfg.feed_limit]  # the read's best members, best first
    now_ms = now_s * 1000.0
    acts = [Act(str(int(actors[i])), int(types[i]), str(int(items[i])),
                decayed_log_weight(float(scores[i]), now_ms, tau_ms)) for i in kept]
    seen = seen_rows(split, case)
    return [int(item.item_id) for item in social_items(acts, {})
            if int(item.item_id) not in seen]


def fused_rank(ranked: Sequence[str], social: Sequence[str], weight: float, target: str,
               k: int) -> int | None:
    """1-based rank of `target` in the top `k` of ``fuse(ranked, social, weight)``."""
    top = [item for item, _ in fuse(ranked, social, weight)[:k]]
    return top.index(target) + 1 if target in top else None


def hit_metrics(ranks: Sequence[int | None], k: int) -> dict[str, float]:
    """HR@k and NDCG@k of ranks (None: not in the top k)."""
    n = max(1, len(ranks))
    return {f"hr@{k}": round(sum(r is not None for r in ranks) / n, 4),
            f"ndcg@{k}": round(sum(1.0 / math.log2(r + 1) for r in ranks if r is not None) / n, 4)}


# The state the worker processes read, set before they fork (no pickling of the split).
_STATE: dict[str, Any] = {}


def _social_chunk(bounds: tuple[int, int]) -> list[list[int]]:
    split, cases, following, cfg = (_STATE[k] for k in ("split", "cases", "following", "cfg"))
    weights = type_weights(cfg.type_weights)
    return [social_ranking(split, case, following[case.user], cfg, weights)
            for case in cases[bounds[0]:bounds[1]]]


def social_rankings(split: Split, cases: Sequence[UserCase], following: list[np.ndarray],
                    cfg: CheckConfig, workers: int = 2) -> list[list[int]]:
    """`social_ranking` of every case, over `workers` forked processes."""
    _STATE.update(split=split, cases=cases, following=following, cfg=cfg)
    chunk = max(1, math.ceil(len(cases) / max(1, workers * 4)))
    bounds = [(a, min(a + chunk, len(cases))) for a in range(0, len(cases), chunk)]
    try:
        if workers <= 1:
            parts = [_social_chunk(b) for b in bounds]
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                parts = list(pool.map(_social_chunk, bounds))
    finally:
        _STATE.clear()
    return [ranking for part in parts for ranking in part]


def evaluate_graph(cases: Sequence[UserCase], model: list[np.ndarray],
                   social: list[list[int]], cfg: CheckConfig) -> dict[str, Any]:
    """Fused HR/NDCG at each weight with the HR gain over the model alone and its paired
    standard error, the social ranking alone, and how often the social ranking has
    anything (coverage) or holds the target at all (recall)."""
    k = cfg.k

    def ranks(weight: float) -> list[int | None]:
        return [fused_rank([str(r) for r in m.tolist()], [str(r) for r in s], weight,
                           str(c.target), k)
                for c, m, s in zip(cases, model, social, strict=True)]

    alone_model = np.array([r is not None for r in ranks(0.0)], dtype=np.float64)
    out: dict[str, Any] = {"weights": {}}
    for weight in cfg.weights:
        fused = ranks(weight)
        gain = np.array([r is not None for r in fused], dtype=np.float64) - alone_model
        out["weights"][str(weight)] = {
            **hit_metrics(fused, k), f"hr@{k}_gain": round(float(gain.mean()), 4) if len(gain) else 0.0,
            f"hr@{k}_gain_se": round(float(gain.std(ddof=1) / math.sqrt(len(gain))), 4)
            if len(gain) > 1 else 0.0}
    alone = [s[:k].index(c.target) + 1 if c.target in s[:k] else None
             for c, s in zip(cases, social, strict=True)]
    out["social_alone"] = hit_metrics(alone, k)
    out["coverage"] = round(sum(bool(s) for s in social) / max(1, len(cases)), 4)
    out["recall"] = round(sum(c.target in s for c, s in zip(cases, social, strict=True))
                          / max(1, len(cases)), 4)
    out["mean_social_items"] = round(float(np.mean([len(s) for s in social])) if social else 0.0, 1)
    return out


def run_check(split: Split, score: Scorer, candidates: np.ndarray,
              graphs: dict[str, list[np.ndarray]], cfg: CheckConfig, *, workers: int = 2,
              on_graph: Callable[[str, dict[str, Any]], None] | None = None,
              ) -> dict[str, dict[str, Any]]:
    """`evaluate_graph` for each named graph (per user, the users they follow), one
    model ranking shared by all."""
    cases = cases_of(split)
    model = model_rankings(score, split, cases, candidates, cfg.model_depth)
    results: dict[str, dict[str, Any]] = {}
    for name, following in graphs.items():
        social = social_rankings(split, cases, following, cfg, workers=workers)
        results[name] = evaluate_graph(cases, model, social, cfg)
        if on_graph is not None:
            on_graph(name, results[name])
    return results


def format_table(results: dict[str, dict[str, Any]], k: int = 10) -> str:
    """Per graph, one row per weight: HR, NDCG, the HR gain over the model alone (± its
    paired standard error); then the social ranking alone, coverage and recall."""
    lines = [f"{'graph':<32}{'weight':>7}{f'HR@{k}':>9}{f'NDCG@{k}':>9}{'HR gain':>10}{'± se':>8}"]
    for name, r in results.items():
        for weight, c in r["weights"].items():
            lines.append(f"{name:<32}{weight:>7}{c[f'hr@{k}']:>9.4f}{c[f'ndcg@{k}']:>9.4f}"
                         f"{c[f'hr@{k}_gain']:>+10.4f}{c[f'hr@{k}_gain_se']:>8.4f}")
        a = r["social_alone"]
        lines.append(f"{name:<32}{'alone':>7}{a[f'hr@{k}']:>9.4f}{a[f'ndcg@{k}']:>9.4f}"
                     f"   (social ranking alone; coverage {r['coverage']:.3f}, "
                     f"target in it {r['recall']:.3f})")
    return "\n".join(lines)
