"""The offline check of the social source on tiny hand-made cases: the social ranking is
serving's (contracts.social), fusion is ``fuse``, and the figures follow from them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from contracts.social import Act, decayed_log_weight, feed_score, fuse, social_items
from ingest.relations import read_relations
from protos import events_pb2
from training.__main__ import main
from training.sequences import Interactions, Split, build_sequences, leave_last_out
from training.socialcheck import (
    CheckConfig,
    UserCase,
    evaluate_graph,
    fused_rank,
    hit_metrics,
    model_rankings,
    run_check,
    social_ranking,
    cases_of,
)

DAY = 86_400
ITEMS = ["a", "b", "c", "d", "e", "f", "g"]
ROWS = {item: row for row, item in enumerate(ITEMS, start=1)}
WEIGHTS = {int(events_pb2.VIEW): 0.25, int(events_pb2.PURCHASE): 3.0}


def _split(rows: list[tuple[str, str, int, int]]) -> Split:
    """(user, item, day, type) rows -> the leave-last-out split."""
    users, items, days, types = zip(*rows)
    events = Interactions(np.array(users, dtype=object), np.array(items, dtype=object),
                          np.array(days, dtype=np.int64) * DAY * 1000, np.array(types))
    return leave_last_out(build_sequences(events, ROWS))


P, V = int(events_pb2.PURCHASE), int(events_pb2.VIEW)
# me: a, b, then the test item e on day 10. friend bought e on day 9 and d on day 2,
# viewed c on day 8, and bought f on day 11, after my test event (never seen by me).
# other (not followed) bought g. me's history item a was also bought by friend.
ROWS_DATA = [
    ("me", "a", 1, P), ("me", "b", 3, P), ("me", "e", 10, P),
    ("friend", "a", 1, P), ("friend", "d", 2, P), ("friend", "c", 8, V), ("friend", "e", 9, P),
    ("friend", "f", 11, P),
    ("other", "g", 4, P), ("other", "g", 5, P), ("other", "b", 6, P),
]


def _case(split: Split, user: str) -> UserCase:
    u = split.full.users.index(user)
    return next(c for c in cases_of(split) if c.user == u)


def test_the_social_ranking_is_the_contracts_ranking_of_acts_before_the_test_time() -> None:
    split = _split(ROWS_DATA)
    me, friend = split.full.users.index("me"), split.full.users.index("friend")
    cfg = CheckConfig(tau_s=7 * DAY)
    ranking = social_ranking(split, _case(split, "me"), np.array([friend]), cfg, WEIGHTS)
    # by the contract: friend's acts before day 10, decayed to day 10; a is mine already
    now_ms, tau_ms = 10 * DAY * 1000.0, 7 * DAY * 1000.0
    acts = [Act(str(friend), t, str(ROWS[i]),
                decayed_log_weight(feed_score(WEIGHTS[t], d * DAY * 1000.0, tau_ms), now_ms,
                                   tau_ms))
            for i, d, t in (("a", 1, P), ("d", 2, P), ("c", 8, V), ("e", 9, P))]
    expected = [int(x.item_id) for x in social_items(acts, {}) if x.item_id != str(ROWS["a"])]
    assert ranking == expected == [ROWS["e"], ROWS["d"], ROWS["c"]]
    assert me != friend


def test_the_feed_limit_keeps_only_the_best_members() -> None:
    split = _split(ROWS_DATA)
    friend = split.full.users.index("friend")
    cfg = CheckConfig(tau_s=7 * DAY, feed_limit=1)
    assert social_ranking(split, _case(split, "me"), np.array([friend]), cfg,
                          WEIGHTS) == [ROWS["e"]]
    assert social_ranking(split, _case(split, "me"), np.array([], dtype=np.int64), cfg,
                          WEIGHTS) == []


def test_a_type_without_a_weight_is_not_a_social_act() -> None:
    split = _split(ROWS_DATA)
    friend = split.full.users.index("friend")
    ranking = social_ranking(split, _case(split, "me"), np.array([friend]),
                             CheckConfig(tau_s=7 * DAY), {V: 1.0})
    assert ranking == [ROWS["c"]]


def test_fused_rank_is_the_targets_place_in_fuse() -> None:
    ranked, social = ["x", "y", "z"], ["z", "w"]
    assert fused_rank(ranked, social, 0.0, "z", 10) == 3
    assert [i for i, _ in fuse(ranked, social, 2.0)][:2] == ["z", "w"]
    assert fused_rank(ranked, social, 2.0, "z", 10) == 1
    assert fused_rank(ranked, social, 2.0, "w", 10) == 2
    assert fused_rank(ranked, social, 2.0, "w", 1) is None


def test_hit_metrics_of_hand_ranks() -> None:
    out = hit_metrics([1, None, 3, None], 10)
    assert out["hr@10"] == 0.5
    assert out["ndcg@10"] == pytest.approx(round((1 + 1 / math.log2(4)) / 4, 4))


def _popular_first(users: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A model that ranks g, then f, d, c, b, a, e for everyone."""
    order = ["g", "f", "d", "c", "b", "a", "e"]
    row = np.array([len(ITEMS) - order.index(item) for item in ITEMS], dtype=np.float32)
    return np.tile(row, (len(users), 1))


def test_the_model_ranking_leaves_out_seen_items_and_keeps_its_depth() -> None:
    split = _split(ROWS_DATA)
    case = _case(split, "me")
    candidates = np.ones(len(ITEMS), dtype=bool)
    (ranked,) = model_rankings(_popular_first, split, [case], candidates, depth=4)
    assert [ITEMS[r - 1] for r in ranked] == ["g", "f", "d", "c"]  # a, b are mine
    candidates[ROWS["f"] - 1] = False
    (ranked,) = model_rankings(_popular_first, split, [case], candidates, depth=10)
    assert [ITEMS[r - 1] for r in ranked] == ["g", "d", "c", "e"]


def test_following_the_right_person_lifts_the_target_and_weight_zero_is_the_model() -> None:
    split = _split(ROWS_DATA)
    me, friend, other = (split.full.users.index(u) for u in ("me", "friend", "other"))
    none = np.array([], dtype=np.int64)
    graphs = {"friend": [none] * split.full.n_users, "other": [none] * split.full.n_users}
    graphs["friend"][me] = np.array([friend])
    graphs["other"][me] = np.array([other])
    candidates = np.ones(len(ITEMS), dtype=bool)
    cfg = CheckConfig(weights=(0.0, 2.0), k=3, model_depth=3, tau_s=7 * DAY)
    results = run_check(split, _popular_first, candidates, graphs, cfg, workers=1)
    cases = cases_of(split)
    mine = [n for n, c in enumerate(cases) if c.user == me][0]
    # the model alone misses e (depth 3: g, f, d); friend's purchase of e puts it first
    model = model_rankings(_popular_first, split, cases, candidates, 3)
    assert fused_rank([str(r) for r in model[mine]], [str(ROWS["e"])], 2.0,
                      str(ROWS["e"]), 3) == 1
    assert results["friend"]["weights"]["0.0"] == results["other"]["weights"]["0.0"]
    assert (results["friend"]["weights"]["2.0"]["hr@3"]
            > results["friend"]["weights"]["0.0"]["hr@3"])
    assert results["other"]["weights"]["2.0"]["hr@3"] <= results["other"]["weights"]["0.0"]["hr@3"]
    assert results["friend"]["recall"] > results["other"]["recall"]


def test_the_forked_workers_give_what_one_process_gives() -> None:
    split = _split(ROWS_DATA)
    me, friend = split.full.users.index("me"), split.full.users.index("friend")
    following = [np.array([], dtype=np.int64)] * split.full.n_users
    following[me] = np.array([friend])
    cases = cases_of(split)
    model = model_rankings(_popular_first, split, cases, np.ones(len(ITEMS), bool), 3)
    from training.socialcheck import social_rankings
    cfg = CheckConfig(tau_s=7 * DAY)
    one = social_rankings(split, cases, following, cfg, workers=1)
    two = social_rankings(split, cases, following, cfg, workers=2)
    assert one == two
    assert evaluate_graph(cases, model, one, cfg) == evaluate_graph(cases, model, two, cfg)


def _interactions_csv(path: Path) -> Path:
    """300 users in 3 taste clusters, 12 ratings each from their cluster's 30 items."""
    rng = np.random.default_rng(11)
    lines = ["user_id,item_id,timestamp,event_type"]
    for u in range(300):
        cluster = u % 3
        for n, i in enumerate(rng.choice(30, 12, replace=False)):
            lines.append(f"1m_{u},m{cluster * 30 + int(i)},{1_000_000_000 + u * 100 + n},rating")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_commands_write_a_graph_ingest_reads_and_the_checks_figures(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _interactions_csv(tmp_path / "ratings.csv")
    graph, user = tmp_path / "follows.csv", tmp_path / "social_user"
    assert main(["social-graph", "--interactions", str(data), "--follows", "5",
                 "--first-events", "3000", "--out", str(graph), "--pick-user", str(user)]) == 0
    relations = read_relations(graph, {}, now_ms=1_790_000_000_000)
    assert relations and all(r.timestamp_ms == 1_000_000_000_000 for r in relations)
    followers = {r.follower_id for r in relations}
    assert {r.followee_id for r in relations} | followers <= {f"1m_{u}" for u in range(250)}
    picked = user.read_text().strip()
    assert picked in followers
    out = tmp_path / "check.json"
    capsys.readouterr()
    assert main(["social-check", "--interactions", str(data), "--graph", str(graph),
                 "--weights", "0,1", "--workers", "2", "--out", str(out)]) == 0
    assert "HR@10" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["model"].startswith("item-knn")
    assert set(result["results"]) == {"follows", "shuffled follows"}
    assert set(result["results"]["follows"]["weights"]) == {"0.0", "1.0"}
    assert main(["social-check", "--interactions", str(data), "--graph",
                 str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err
