"""Interactions as per-user time-ordered sequences, the leave-last-out split, and the
left-padded windows the user tower reads.

Items are numbered by *row*: row r (1-based) is catalog item ``item_ids[r - 1]``; row 0
is padding. A user's events are ordered by time, ties by their order in the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

PAD = 0


@dataclass(frozen=True)
class Interactions:
    """Events as columns, in input order (the order that breaks timestamp ties)."""

    user_ids: np.ndarray  # object [events]
    item_ids: np.ndarray  # object [events]
    timestamps_ms: np.ndarray  # int64 [events]
    event_types: np.ndarray  # int64 [events], protobuf EventType values

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass(frozen=True)
class Sequences:
    """One sequence per user in CSR form: ``items[starts[u]:starts[u + 1]]``, oldest first."""

    users: list[str]
    items: np.ndarray  # int64 item rows (>= 1)
    types: np.ndarray  # int64
    times_s: np.ndarray  # float64 seconds
    starts: np.ndarray  # int64 [users + 1]

    @property
    def n_users(self) -> int:
        return len(self.users)

    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def user(self, u: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b = self.starts[u], self.starts[u + 1]
        return self.items[a:b], self.types[a:b], self.times_s[a:b]


def build_sequences(events: Interactions, item_row: dict[str, int]) -> Sequences:
    """Group events by user (users in order of first appearance), each by time then input
    order. Events of items missing from `item_row` are dropped."""
    rows = np.fromiter((item_row.get(i, 0) for i in events.item_ids), np.int64, len(events))
    keep = rows > 0
    codes, users = pd.factorize(pd.Series(events.user_ids[keep], dtype=object), sort=False)
    times = np.asarray(events.timestamps_ms, dtype=np.int64)[keep]
    order = np.lexsort((np.arange(len(codes)), times, codes))
    counts = np.bincount(codes, minlength=len(users))
    return Sequences(
        users=[str(u) for u in users],
        items=rows[keep][order],
        types=np.asarray(events.event_types, dtype=np.int64)[keep][order],
        times_s=times[order].astype(np.float64) / 1000.0,
        starts=np.r_[0, np.cumsum(counts)].astype(np.int64),
    )


def drop_last(seqs: Sequences, n: int) -> Sequences:
    """Every user's sequence without its newest `n` events (users left empty stay, empty)."""
    lengths = np.maximum(seqs.lengths() - n, 0)
    keep = np.concatenate(
        [np.arange(a, a + k) for a, k in zip(seqs.starts[:-1].tolist(), lengths.tolist())]
        or [np.array([], dtype=np.int64)]
    )
    return Sequences(
        users=seqs.users,
        items=seqs.items[keep],
        types=seqs.types[keep],
        times_s=seqs.times_s[keep],
        starts=np.r_[0, np.cumsum(lengths)].astype(np.int64),
    )


@dataclass(frozen=True)
class Split:
    """Leave-last-out: per user, the newest event is the test target, the one before it
    the validation target; `train` holds the rest."""

    full: Sequences
    train: Sequences
    eval_users: np.ndarray  # users with >= 3 events
    valid_targets: np.ndarray  # item rows, aligned with eval_users
    test_targets: np.ndarray


def leave_last_out(seqs: Sequences) -> Split:
    lengths = seqs.lengths()
    users = np.flatnonzero(lengths >= 3)
    ends = seqs.starts[1:][users]
    return Split(
        full=seqs,
        train=drop_last(seqs, 2),
        eval_users=users,
        valid_targets=seqs.items[ends - 2],
        test_targets=seqs.items[ends - 1],
    )


@dataclass(frozen=True)
class Window:
    """A batch of left-padded histories, the user tower's inputs (row ids, not vectors)."""

    items: np.ndarray  # int64 [B, L], 0 = padding
    types: np.ndarray  # int64 [B, L]
    gaps_s: np.ndarray  # float32 [B, L], seconds before the window's newest event
    mask: np.ndarray  # bool [B, L]


def windows(
    seqs: Sequences, users: Sequence[int] | np.ndarray, ends: Sequence[int] | np.ndarray,
    max_len: int,
) -> Window:
    """For each user u and end e: the events ``[e - max_len, e)`` of u's sequence (e is a
    count from u's start), right-aligned into `max_len` slots."""
    n = len(users)
    items = np.zeros((n, max_len), dtype=np.int64)
    types = np.zeros((n, max_len), dtype=np.int64)
    gaps = np.zeros((n, max_len), dtype=np.float32)
    for b, (u, e) in enumerate(zip(users, ends)):
        start = seqs.starts[u]
        first = max(0, int(e) - max_len)
        k = int(e) - first
        if k <= 0:
            continue
        sl = slice(start + first, start + int(e))
        items[b, max_len - k :] = seqs.items[sl]
        types[b, max_len - k :] = seqs.types[sl]
        t = seqs.times_s[sl]
        gaps[b, max_len - k :] = np.maximum(t[-1] - t, 0.0)
    return Window(items=items, types=types, gaps_s=gaps, mask=items != PAD)


def training_batch(
    seqs: Sequences, users: np.ndarray, max_len: int, rng: np.random.Generator,
    crop_prob: float,
) -> tuple[Window, np.ndarray]:
    """Inputs and next-item targets ``[B, L]`` (0 = no target) for next-item prediction
    at every position, at most ``max_len`` slots wide (less when every history of the
    batch is shorter). Usually the newest ``max_len + 1`` events of each training
    sequence; with probability `crop_prob` a user with a longer history gets a random
    older window instead (more distinct training contexts per epoch)."""
    lengths = seqs.lengths()[users]
    ends = lengths.copy()
    long = lengths > max_len + 1
    crop = long & (rng.random(len(users)) < crop_prob)
    if crop.any():
        ends[crop] = rng.integers(max_len + 1, lengths[crop] + 1)
    # as wide as the longest input of the batch: slots that are padding in every row
    # change nothing (padding is masked) and would cost a third of an epoch on ML-1M
    width = int(min(max_len, max(1, (ends - 1).max(initial=1))))
    inputs = windows(seqs, users, ends - 1, width)
    targets = windows(seqs, users, ends, width).items
    targets = np.where(inputs.mask, targets, PAD)  # a target only where there is an input
    return inputs, targets


def epoch_batches(
    n_users: int, batch_size: int, rng: np.random.Generator,
    lengths: np.ndarray | None = None, bucket: int = 16,
) -> list[np.ndarray]:
    """A shuffled partition of ``range(n_users)`` into batches of at most `batch_size`.

    With `lengths` (per user, e.g. the window length each will get), users of similar
    length share a batch, so batches carry little padding: each run of `bucket` batches'
    worth of shuffled users is sorted by length and cut into batches, and the batches
    are shuffled again.
    """
    order = rng.permutation(n_users)
    if lengths is not None:
        span = batch_size * bucket
        order = np.concatenate([
            chunk[np.argsort(lengths[chunk], kind="stable")]
            for chunk in (order[i : i + span] for i in range(0, n_users, span))
        ] or [order])
    batches = [order[i : i + batch_size] for i in range(0, n_users, batch_size)]
    if lengths is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
