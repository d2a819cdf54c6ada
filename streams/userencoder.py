"""User vectors of a batch of users, one call per batch.

Two kinds, as a version's manifest says (docs/contracts.md §4): the decayed weighted mean
of item vectors (``weighted_mean``, the bootstrap ``base``), and the exported user tower
(``transformer``, ``user_encoder.pt2``), run once per batch of users on the GPU when
present, or with the ``tower_process`` setting in a CPU process of its own
(:mod:`streams.towerprocess`). Items without a vector of the version are left out of a
user's sequence.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from streams.errors import ModelLoadError
from streams.history import Interaction
from streams.towerprocess import TowerProcess, run_program
from streams.vectors import VectorLookup, user_vector


class UserEncoder(Protocol):
    """``encode`` returns one L2-normalised float32 [dim] vector per history, or None where
    no item of the history has a vector. ``heavy``: a network pass per call (milliseconds,
    where the weighted mean costs microseconds): ``user_vectors=auto`` defers its vectors
    (streams.pending). Calls run on the event loop: in a thread, each operator of a tower
    waits for the GIL while the loop runs Python."""

    heavy: bool

    def encode(
        self, histories: Sequence[Sequence[Interaction]], lookup: VectorLookup
    ) -> list[np.ndarray | None]: ...

    async def encode_async(
        self, histories: Sequence[Sequence[Interaction]], lookup: VectorLookup
    ) -> list[np.ndarray | None]:
        """:meth:`encode`, awaiting the pass where it runs off the loop (a tower process)."""
        ...


class WeightedMean:
    """Each item counts ``weight * 0.5 ** (age / half_life)`` (:func:`user_vector`)."""

    heavy = False

    def __init__(self, half_life_ms: float) -> None:
        self.half_life_ms = half_life_ms

    def encode(
        self, histories: Sequence[Sequence[Interaction]], lookup: VectorLookup
    ) -> list[np.ndarray | None]:
        return [user_vector(h, lookup, half_life_ms=self.half_life_ms) for h in histories]

    async def encode_async(
        self, histories: Sequence[Sequence[Interaction]], lookup: VectorLookup
    ) -> list[np.ndarray | None]:
        return self.encode(histories, lookup)


@dataclass
class Inputs:
    """The user tower's inputs for the users in ``rows`` (indexes into the histories)."""

    item_vectors: np.ndarray  # float32 [B, L, dim], zeros in padding
    event_types: np.ndarray  # int64 [B, L], 0 in padding
    gaps_s: np.ndarray  # float32 [B, L], seconds before the user's newest event
    mask: np.ndarray  # bool [B, L], True for real events (the last slots)
    rows: list[int]

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The tower's four inputs, in its signature's order."""
        return self.item_vectors, self.event_types, self.gaps_s, self.mask


def tower_inputs(
    histories: Sequence[Sequence[Interaction]], lookup: VectorLookup, *, max_len: int, dim: int
) -> Inputs:
    """Left-padded inputs from each history's newest `max_len` items that have a vector
    (histories are oldest first); histories with none are left out of ``rows``."""
    return _padded(_with_vectors(histories, lookup, max_len), range(len(histories)),
                   length=max_len, dim=dim)


Found = tuple[list[tuple[Interaction, np.ndarray]], int]  # (items with vectors, newest ms)


def _with_vectors(histories: Sequence[Sequence[Interaction]], lookup: VectorLookup,
                  max_len: int) -> list[Found | None]:
    """Each history's newest `max_len` items that have a vector, with the time of the
    whole history's newest event; None for a history without any."""
    out: list[Found | None] = []
    for history in histories:
        found = [(i, v) for i in history if (v := lookup(i.item_id)) is not None][-max_len:]
        out.append((found, max(i.timestamp_ms for i in history)) if found else None)
    return out


def _padded(found: Sequence[Found | None], rows: Iterable[int], *, length: int,
            dim: int) -> Inputs:
    """The inputs of `rows` (indexes into `found`, those with items), `length` slots each."""
    kept = [row for row in rows if found[row] is not None]
    batch = len(kept)
    inputs = Inputs(
        np.zeros((batch, length, dim), np.float32), np.zeros((batch, length), np.int64),
        np.zeros((batch, length), np.float32), np.zeros((batch, length), np.bool_), kept,
    )
    for b, row in enumerate(kept):
        items, newest = found[row]  # type: ignore[misc]  # kept rows have items
        start = length - len(items)
        inputs.item_vectors[b, start:] = np.stack([v for _, v in items])
        inputs.event_types[b, start:] = [i.event_type for i, _ in items]
        inputs.gaps_s[b, start:] = [(newest - i.timestamp_ms) / 1000.0 for i, _ in items]
        inputs.mask[b, start:] = True
    return inputs


# Rows a length group needs for a call of its own: a call of the tower costs ~2.5 ms on
# this CPU whatever its size (3 users in 3 groups took 8 ms, in one 3 ms), so a group
# smaller than this runs with the next longer one.
MIN_GROUP_ROWS = 16


def length_groups(lengths: Sequence[int], *, min_len: int, max_len: int,
                  min_rows: int = MIN_GROUP_ROWS) -> dict[int, list[int]]:
    """Rows grouped by the padded length they run at: the smallest of `min_len`, 8, 16,
    32, ... (then `max_len`) that holds them, so no row is padded to more than twice its
    length (or `min_len`); a group of fewer than `min_rows` rows joins the next longer
    one instead, so a batch makes a few calls, and a small batch one."""
    buckets: dict[int, list[int]] = {}
    for row, n in enumerate(lengths):
        length = max(min_len, 8)
        while length < n:
            length *= 2
        buckets.setdefault(min(max(length, min_len), max_len), []).append(row)
    groups: dict[int, list[int]] = {}
    carried: list[int] = []
    longest = max(buckets, default=0)
    for length in sorted(buckets):
        rows = carried + buckets[length]
        if len(rows) < min_rows and length != longest:
            carried = rows
            continue
        groups[length], carried = rows, []
    return groups


class ExportedTower:
    """The ``torch.export``-ed user tower of a trained version."""

    heavy = True

    def __init__(self, module: torch.nn.Module, *, max_len: int, dim: int,
                 device: torch.device, bf16: bool = False, min_len: int = 0,
                 path: Path | None = None, process: TowerProcess | None = None) -> None:
        if process is not None and (path is None or device.type != "cpu"):
            raise ValueError("a tower process runs a CPU tower from its file")
        self._module = module
        # with `process`, passes run there on the program of `path` (encode_async)
        self.path, self.process = path, process
        self.max_len = max_len
        self.dim = dim
        self.device = device
        self.bf16 = bf16  # autocast: ~1.8x on a CPU with native bf16, cosine 0.99999 to fp32
        # > 0: the program takes any length from min_len to max_len, and a batch's users
        # run in groups of like length (length_groups) instead of all at max_len
        self.min_len = min_len

    @classmethod
    def load(cls, path: Path, *, max_len: int, dim: int, device: torch.device,
             bf16: bool = False, min_len: int = 0,
             process: TowerProcess | None = None) -> ExportedTower:
        try:
            module = torch.export.load(str(path)).module().to(device)
        except Exception as error:  # torch raises many kinds on a bad file
            raise ModelLoadError(f"{path}: cannot load the user encoder ({error})") from None
        return cls(module, max_len=max_len, dim=dim, device=device, bf16=bf16, min_len=min_len,
                   path=path, process=process)

    @torch.inference_mode()
    def encode(
        self, histories: Sequence[Sequence[Interaction]], lookup: VectorLookup
    ) -> list[np.ndarray | None]:
        """The vectors, every pass in this process (also with a tower process)."""
        vectors: list[np.ndarray | None] = [None] * len(histories)
        for inputs in self._inputs(histories, lookup):
            _place(vectors, inputs, self._run(inputs))
        return vectors

    async def encode_async(
        self, histories: Sequence[Sequence[Interaction]], lookup: VectorLookup
    ) -> list[np.ndarray | None]:
        """The vectors, the passes in the tower process when there is one (the inputs are
        made here, before the first await: the catalog's vectors as they are now)."""
        if self.process is None:
            return self.encode(histories, lookup)
        groups = self._inputs(histories, lookup)
        vectors: list[np.ndarray | None] = [None] * len(histories)
        for inputs in groups:
            _place(vectors, inputs, await self.process.run(str(self.path), inputs.arrays(),
                                                            self.bf16))
        return vectors

    def _inputs(self, histories: Sequence[Sequence[Interaction]],
                lookup: VectorLookup) -> list[Inputs]:
        """The padded inputs of each length group (one group at `max_len` for a tower
        exported at one length)."""
        found = _with_vectors(histories, lookup, self.max_len)
        rows = [row for row, f in enumerate(found) if f is not None]
        if not rows:
            return []
        if self.min_len:
            lengths = [len(found[row][0]) for row in rows]  # type: ignore[index]
            groups = {length: [rows[i] for i in members] for length, members in length_groups(
                lengths, min_len=self.min_len, max_len=self.max_len).items()}
        else:
            groups = {self.max_len: rows}
        return [_padded(found, members, length=length, dim=self.dim)
                for length, members in groups.items()]

    def _run(self, inputs: Inputs) -> np.ndarray:
        return run_program(self._module, inputs.arrays(), device=self.device, bf16=self.bf16)


def _place(vectors: list[np.ndarray | None], inputs: Inputs, out: np.ndarray) -> None:
    """The rows of a pass's output into the vectors of their histories."""
    for row, vector in zip(inputs.rows, out, strict=True):
        vectors[row] = vector
