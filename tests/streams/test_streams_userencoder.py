"""streams.userencoder: the user tower's inputs, and the weighted mean, without Kafka."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from protos import events_pb2
from streams.history import Interaction
from streams.towerprocess import TowerProcess, TowerProcessError
from streams.userencoder import ExportedTower, WeightedMean, length_groups, tower_inputs
from streams.vectors import user_vector
from training.export import MIN_LENGTH, export_user_encoder
from training.model import ModelConfig, TwoTower

VECTORS = {"a": np.array([1.0, 0.0], np.float32), "b": np.array([0.0, 1.0], np.float32)}


def seen(item: str, ts: int, kind: int = events_pb2.CLICK) -> Interaction:
    return Interaction(item, kind, ts, 2.0)


def test_inputs_are_left_padded_newest_last() -> None:
    histories = [
        [seen("a", 1_000, events_pb2.VIEW), seen("gone", 2_000), seen("b", 4_000)],
        [seen("gone", 5_000)],  # no item with a vector: no row
        [seen("a", k * 1_000) for k in range(5)],
    ]
    inputs = tower_inputs(histories, VECTORS.get, max_len=3, dim=2)
    assert inputs.rows == [0, 2]
    np.testing.assert_array_equal(inputs.mask, [[False, True, True], [True, True, True]])
    np.testing.assert_array_equal(inputs.item_vectors[0], [[0, 0], [1, 0], [0, 1]])
    np.testing.assert_array_equal(inputs.event_types[0], [0, events_pb2.VIEW, events_pb2.CLICK])
    np.testing.assert_array_equal(inputs.gaps_s[0], [0.0, 3.0, 0.0])
    np.testing.assert_array_equal(inputs.gaps_s[1], [2.0, 1.0, 0.0])  # the newest 3 of 5
    assert inputs.item_vectors.dtype == np.float32 and inputs.event_types.dtype == np.int64


def test_gaps_count_from_the_newest_event_even_without_a_vector() -> None:
    inputs = tower_inputs([[seen("a", 1_000), seen("gone", 3_000)]], VECTORS.get,
                          max_len=2, dim=2)
    np.testing.assert_array_equal(inputs.gaps_s, [[0.0, 2.0]])


def test_weighted_mean_is_the_user_vector_of_each_history() -> None:
    histories = [[seen("a", 0), seen("b", 3_600_000)], [seen("gone", 1)]]
    vectors = WeightedMean(3_600_000.0).encode(histories, VECTORS.get)
    want = user_vector(histories[0], VECTORS.get, half_life_ms=3_600_000.0)
    assert want is not None and vectors[1] is None
    np.testing.assert_allclose(vectors[0], want)


def test_rows_run_at_the_shortest_length_that_holds_them_at_most_twice_over() -> None:
    lengths = [1, 3, 8, 9, 17, 40, 100, 129, 200]
    groups = length_groups(lengths, min_len=3, max_len=200, min_rows=1)
    assert groups == {8: [0, 1, 2], 16: [3], 32: [4], 64: [5], 128: [6], 200: [7, 8]}
    assert length_groups([1, 6], min_len=3, max_len=6, min_rows=1) == {6: [0, 1]}  # <= max_len
    for length, rows in groups.items():
        assert all(lengths[r] <= length and (length <= 8 or length < 2 * lengths[r])
                   for r in rows)


def test_a_group_too_small_for_a_call_of_its_own_runs_with_the_next_longer_one() -> None:
    lengths = [2] * 20 + [10] * 3 + [30] * 2 + [60] * 20
    groups = length_groups(lengths, min_len=3, max_len=200, min_rows=16)
    assert groups == {8: list(range(20)), 64: list(range(20, 45))}
    assert length_groups([2, 20, 45], min_len=3, max_len=200) == {64: [0, 1, 2]}  # one call
    assert length_groups([], min_len=3, max_len=200) == {}


@pytest.mark.parametrize("time_bias", [False, True])
def test_a_tower_cut_to_each_groups_length_gives_the_full_length_vectors(
        tmp_path: Path, time_bias: bool) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=4, dim=8, max_len=40, n_blocks=2, n_heads=2, use_text=False,
                      time_bias=time_bias)
    path = tmp_path / "user_encoder.pt2"
    model = TwoTower(cfg, None)
    if model.user.time_bias is not None:
        nn.init.normal_(model.user.time_bias.weight)  # a bias that matters
    assert export_user_encoder(model, path) == MIN_LENGTH
    rng = np.random.default_rng(0)
    vectors = {f"i{k}": rng.normal(size=8).astype(np.float32) for k in range(30)}
    histories = [[seen(f"i{(u + k) % 30}", 1_000 * k) for k in range(n)]
                 for u, n in enumerate([1, 2, 7, 12, 39, 55])]  # 55: its newest 40
    histories.insert(2, [seen("gone", 1)])  # no vector: None
    device = torch.device("cpu")
    cut = ExportedTower.load(path, max_len=40, dim=8, device=device, min_len=MIN_LENGTH)
    full = ExportedTower.load(path, max_len=40, dim=8, device=device)  # an older export's way
    got, want = cut.encode(histories, vectors.get), full.encode(histories, vectors.get)
    assert got[2] is None and want[2] is None
    for g, w in zip(got, want, strict=True):
        if w is not None:
            np.testing.assert_allclose(g, w, atol=1e-5)


def test_a_tower_process_gives_the_vectors_of_the_tower_here_and_outlives_its_child(
        tmp_path: Path) -> None:

    torch.manual_seed(1)
    cfg = ModelConfig(n_items=4, dim=8, max_len=40, n_blocks=2, n_heads=2, use_text=False)
    path = tmp_path / "user_encoder.pt2"
    export_user_encoder(TwoTower(cfg, None), path)
    rng = np.random.default_rng(1)
    vectors = {f"i{k}": rng.normal(size=8).astype(np.float32) for k in range(30)}
    histories = [[seen(f"i{(u + k) % 30}", 1_000 * k) for k in range(n)]
                 for u, n in enumerate([2, 9, 17, 33, 50])]
    histories.insert(1, [seen("gone", 1)])  # no vector: None
    device = torch.device("cpu")
    here = ExportedTower.load(path, max_len=40, dim=8, device=device, min_len=MIN_LENGTH)
    process = TowerProcess(threads=1)
    there = ExportedTower.load(path, max_len=40, dim=8, device=device, min_len=MIN_LENGTH,
                               process=process)

    async def scenario() -> None:
        want = here.encode(histories, vectors.get)
        got = await there.encode_async(histories, vectors.get)
        assert got[1] is None and want[1] is None
        for g, w in zip(got, want, strict=True):
            if w is not None:
                np.testing.assert_allclose(g, w, atol=1e-5)
        # the child dies: the call in flight fails, the next starts another child
        child = next(iter(process._executor()._processes))  # noqa: SLF001
        os.kill(child, signal.SIGKILL)
        with pytest.raises(TowerProcessError):
            for _ in range(50):  # until the pool notices the death
                await there.encode_async(histories, vectors.get)
                await asyncio.sleep(0.05)
        again = await there.encode_async(histories, vectors.get)
        np.testing.assert_allclose(again[0], want[0], atol=1e-5)

    try:
        asyncio.run(scenario())
    finally:
        process.close()


def test_a_tower_process_needs_a_cpu_tower_file() -> None:
    module = torch.nn.Identity()
    with pytest.raises(ValueError, match="CPU tower"):
        ExportedTower(module, max_len=4, dim=2, device=torch.device("cpu"),
                      process=TowerProcess())
