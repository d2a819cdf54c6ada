"""Sequences: ordering, the leave-last-out split, left-padded windows and batches."""

from __future__ import annotations

import numpy as np

from training.sequences import (
    Interactions,
    build_sequences,
    drop_last,
    epoch_batches,
    leave_last_out,
    training_batch,
    windows,
)


def _events(rows: list[tuple[str, str, int]]) -> Interactions:
    return Interactions(
        user_ids=np.array([r[0] for r in rows], dtype=object),
        item_ids=np.array([r[1] for r in rows], dtype=object),
        timestamps_ms=np.array([r[2] for r in rows], dtype=np.int64),
        event_types=np.full(len(rows), 5, dtype=np.int64),
    )


ROWS = {"a": 1, "b": 2, "c": 3, "d": 4}


def test_sequences_order_by_time_then_input_order() -> None:
    seqs = build_sequences(
        _events([("u", "c", 3000), ("v", "a", 1000), ("u", "b", 1000), ("u", "a", 1000),
                 ("u", "zzz", 500)]),
        ROWS,
    )
    assert seqs.users == ["u", "v"]  # first appearance
    items, _, times = seqs.user(0)
    assert items.tolist() == [2, 1, 3]  # b before a: same time, b came first; unknown dropped
    assert times.tolist() == [1.0, 1.0, 3.0]
    assert seqs.user(1)[0].tolist() == [1]


def test_leave_last_out_targets_and_train() -> None:
    seqs = build_sequences(
        _events([("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("u", "d", 4),
                 ("v", "a", 1), ("v", "b", 2)]),
        ROWS,
    )
    split = leave_last_out(seqs)
    assert split.eval_users.tolist() == [0]  # v has only 2 events
    assert split.test_targets.tolist() == [4] and split.valid_targets.tolist() == [3]
    assert split.train.user(0)[0].tolist() == [1, 2]
    assert split.train.user(1)[0].tolist() == []
    assert drop_last(seqs, 1).user(1)[0].tolist() == [1]


def test_windows_are_left_padded_with_gaps_to_the_newest() -> None:
    seqs = build_sequences(
        _events([("u", "a", 1000), ("u", "b", 4000), ("u", "c", 10000)]), ROWS
    )
    w = windows(seqs, [0, 0], [3, 2], max_len=4)
    assert w.items.tolist() == [[0, 1, 2, 3], [0, 0, 1, 2]]
    assert w.mask.tolist() == [[False, True, True, True], [False, False, True, True]]
    assert w.gaps_s.tolist() == [[0.0, 9.0, 6.0, 0.0], [0.0, 0.0, 3.0, 0.0]]
    assert w.types[0].tolist() == [0, 5, 5, 5]
    short = windows(seqs, [0], [3], max_len=2)
    assert short.items.tolist() == [[2, 3]]  # the newest ones


def test_training_batch_targets_are_the_next_items() -> None:
    seqs = build_sequences(
        _events([("u", k, t) for t, k in enumerate("abcd")] + [("v", "d", 1), ("v", "a", 2)]),
        ROWS,
    )
    rng = np.random.default_rng(0)
    inputs, targets = training_batch(seqs, np.array([0, 1]), 5, rng, crop_prob=0.0)
    # three slots: the longest input of the batch, not max_len
    assert inputs.items.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert targets.tolist() == [[2, 3, 4], [0, 0, 1]]
    inputs, targets = training_batch(seqs, np.array([0, 1]), 2, rng, crop_prob=0.0)
    assert inputs.items.tolist() == [[2, 3], [0, 4]]
    assert targets.tolist() == [[3, 4], [0, 1]]


def test_training_batch_crop_keeps_targets_aligned() -> None:
    events = [("u", k, t) for t, k in enumerate("abcdabcdabcd")]
    seqs = build_sequences(_events(events), ROWS)
    rng = np.random.default_rng(1)
    for _ in range(10):
        inputs, targets = training_batch(seqs, np.array([0]), 3, rng, crop_prob=1.0)
        # in the cycle a b c d, every target is its input's successor
        assert ((inputs.items[0] % 4) + 1 == targets[0]).all()


def test_epoch_batches_partition_the_users() -> None:
    batches = epoch_batches(10, 4, np.random.default_rng(0))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))


def test_epoch_batches_by_length_group_similar_users() -> None:
    lengths = np.arange(64) % 8  # eight users of each length 0..7
    batches = epoch_batches(64, 8, np.random.default_rng(0), lengths=lengths, bucket=8)
    assert sorted(np.concatenate(batches).tolist()) == list(range(64))
    # one bucket holds every user: each batch is then users of a single length
    assert all(len(set(lengths[b].tolist())) == 1 for b in batches)
    assert [lengths[b][0] for b in batches] != sorted(lengths[b][0] for b in batches)
