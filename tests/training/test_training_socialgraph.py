"""The synthetic follow graph: determined by its seed, the degrees it promises, a planted
taste effect that can be measured, a shuffle that keeps degrees and removes it, and a
file that ``ingest relations`` reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contracts.relations import RelationLimits
from ingest.relations import read_relations
from protos import events_pb2
from training import socialgraph
from training.sequences import Interactions, build_sequences
from training.socialgraph import GraphConfig

CLUSTERS, PER_CLUSTER, ITEMS_PER_CLUSTER = 4, 100, 40


def _clustered_taste() -> tuple[np.ndarray, np.ndarray]:
    """Taste vectors of 400 users in 4 clusters (each rates 15 of its cluster's 40 items),
    and each user's cluster."""
    rng = np.random.default_rng(7)
    users, items = [], []
    for u in range(CLUSTERS * PER_CLUSTER):
        cluster = u // PER_CLUSTER
        for i in rng.choice(ITEMS_PER_CLUSTER, 15, replace=False):
            users.append(f"u{u}")
            items.append(f"i{cluster * ITEMS_PER_CLUSTER + int(i)}")
    n = len(users)
    seqs = build_sequences(
        Interactions(np.array(users, dtype=object), np.array(items, dtype=object),
                     np.arange(n, dtype=np.int64), np.full(n, events_pb2.RATING)),
        {f"i{i}": i + 1 for i in range(CLUSTERS * ITEMS_PER_CLUSTER)})
    taste = socialgraph.taste_vectors(seqs, CLUSTERS * ITEMS_PER_CLUSTER, dim=8, seed=0)
    order = np.array([int(user[1:]) for user in seqs.users])
    return taste, order // PER_CLUSTER


@pytest.fixture(scope="module")
def taste() -> tuple[np.ndarray, np.ndarray]:
    return _clustered_taste()


def test_the_same_seed_gives_the_same_graph_and_another_seed_another(taste) -> None:
    vectors, _ = taste
    one = socialgraph.generate(vectors, GraphConfig(follows=10, seed=3))
    again = socialgraph.generate(vectors, GraphConfig(follows=10, seed=3))
    other = socialgraph.generate(vectors, GraphConfig(follows=10, seed=4))
    assert np.array_equal(one.followers, again.followers)
    assert np.array_equal(one.followees, again.followees)
    assert np.array_equal(one.named, again.named)
    assert not np.array_equal(one.followees, other.followees)


def test_degrees_spread_around_f_and_a_few_accounts_are_followed_by_many(taste) -> None:
    vectors, _ = taste
    graph = socialgraph.generate(vectors, GraphConfig(follows=10, signal=0.3, seed=1))
    out, indeg = graph.out_degrees(), graph.in_degrees()
    assert out.min() >= 1
    assert 8.0 <= out.mean() <= 12.0  # mean f, within sampling noise of 400 users
    assert out.std() > 3  # spread, not everyone 10
    assert indeg.max() >= 5 * indeg.mean()  # heavy-tailed: the famous few
    top = np.sort(indeg)[::-1][: len(indeg) // 20].sum() / indeg.sum()
    assert top > 0.2  # the top 5% of accounts hold over a fifth of all follows
    codes = graph.followers * graph.n_users + graph.followees
    assert len(np.unique(codes)) == len(codes)  # no edge twice
    assert not (graph.followers == graph.followees).any()  # nobody follows themself
    assert 0.2 < graph.named.mean() < 0.4  # share_name on about 30%


def test_the_planted_signal_is_measurable_and_zero_signal_is_chance(taste) -> None:
    vectors, cluster = taste
    near = socialgraph.nearest_users(vectors, 50)
    assert (cluster[near] == cluster[:, None]).mean() > 0.95  # taste finds the clusters
    planted = socialgraph.generate(vectors, GraphConfig(follows=10, signal=0.6, seed=2))
    random = socialgraph.generate(vectors, GraphConfig(follows=10, signal=0.0, seed=2))
    share_planted = socialgraph.taste_share(planted, near)
    share_random = socialgraph.taste_share(random, near)
    assert share_planted > 0.55
    assert share_random < 0.25  # 50 of 399 users: chance is ~0.13, fame aside
    same = lambda g: (cluster[g.followers] == cluster[g.followees]).mean()  # noqa: E731
    assert same(planted) > 0.6 > 0.35 > same(random)


def test_the_shuffle_keeps_every_degree_and_removes_the_signal(taste) -> None:
    vectors, _ = taste
    near = socialgraph.nearest_users(vectors, 50)
    planted = socialgraph.generate(vectors, GraphConfig(follows=10, signal=0.8, seed=5))
    shuffled = socialgraph.shuffle(planted, seed=6)
    assert np.array_equal(shuffled.out_degrees(), planted.out_degrees())
    assert np.array_equal(shuffled.in_degrees(), planted.in_degrees())
    codes = shuffled.followers * shuffled.n_users + shuffled.followees
    assert len(np.unique(codes)) == len(codes)
    assert not (shuffled.followers == shuffled.followees).any()
    assert socialgraph.taste_share(planted, near) > 0.7
    assert socialgraph.taste_share(shuffled, near) < 0.25


def test_signal_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="signal"):
        GraphConfig(signal=1.5)


def test_the_written_edge_list_is_what_ingest_relations_reads(taste, tmp_path: Path) -> None:
    vectors, _ = taste
    graph = socialgraph.generate(vectors, GraphConfig(follows=5, seed=8))
    users = [f"1m_{u}" for u in range(graph.n_users)]
    path = tmp_path / "follows.csv"
    socialgraph.write(socialgraph.to_frame(graph, users, created_ms=956_700_000_000), path)
    relations = read_relations(path, {}, now_ms=1_790_000_000_000, limits=RelationLimits())
    assert len(relations) == len(graph.followers)
    first = relations[0]
    assert first.follower_id == users[graph.followers[0]]
    assert first.followee_id == users[graph.followees[0]]
    assert first.kind == events_pb2.FOLLOW
    assert first.timestamp_ms == 956_700_000_000
    assert [r.share_name for r in relations] == graph.named.tolist()
    back = socialgraph.read(path, {user: u for u, user in enumerate(users)})
    assert np.array_equal(back.followers, graph.followers)
    assert np.array_equal(back.followees, graph.followees)
