"""User vectors of a batch of users, one call per batch.

Two kinds, as a version's manifest says (docs/contracts.md §4): the decayed weighted mean
of item vectors (``weighted_mean``, the bootstrap ``base``), and the exported user tower
(``transformer``, ``user_encoder.pt2``), run once per batch of users on the GPU when
present. Items without a vector of the version are left out of a user's sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from streams.errors import ModelLoadError
from streams.history import Interaction
from streams.vectors import VectorLookup, user_vector


class UserEncoder(Protocol):
    """``encode`` returns one L2-normalised float32 [dim] vector per history, or None where
    no item of the history has a vector. ``blocking``: run it off the event loop."""

    blocking: bool

    def encode(
        self, histories: Sequence[Sequence[Interaction]], lookup: VectorLookup
    ) -> list[np.ndarray | None]: ...


class WeightedMean:
    """Each item counts ``weight * 0.5 ** (age / half_life)`` (:func:`user_vector`)."""

    blocking = False

    def __init__(self, half_life_ms: float) -> None:
        self.half_life_ms = half_life_ms

    def encode(
        self, histories: Sequence[Sequence[Interaction]], lookup: VectorLookup
    ) -> list[np.ndarray | None]:
        return [user_vector(h, lookup, half_life_ms=self.half_life_ms) for h in histories]


@dataclass
class Inputs:
    """The user tower's inputs for the users in ``rows`` (indexes into the histories)."""

    item_vectors: np.ndarray  # float32 [B, L, dim], zeros in padding
    event_types: np.ndarray  # int64 [B, L], 0 in padding
    gaps_s: np.ndarray  # float32 [B, L], seconds before the user's newest event
    mask: np.ndarray  # bool [B, L], True for real events (the last slots)
    rows: list[int]


def tower_inputs(
    histories: Sequence[Sequence[Interaction]], lookup: VectorLookup, *, max_len: int, dim: int
) -> Inputs:
    """Left-padded inputs from each history's newest `max_len` items that have a vector
    (histories are oldest first); histories with none are left out of ``rows``."""
    kept: list[list[tuple[Interaction, np.ndarray]]] = []
    newest: list[int] = []  # of the whole history, with or without vectors
    rows: list[int] = []
    for row, history in enumerate(histories):
        found = [(i, v) for i in history if (v := lookup(i.item_id)) is not None][-max_len:]
        if found:
            kept.append(found)
            newest.append(max(i.timestamp_ms for i in history))
            rows.append(row)
    batch = len(kept)
    inputs = Inputs(
        np.zeros((batch, max_len, dim), np.float32), np.zeros((batch, max_len), np.int64),
        np.zeros((batch, max_len), np.float32), np.zeros((batch, max_len), np.bool_), rows,
    )
    for b, found in enumerate(kept):
        start = max_len - len(found)
        inputs.item_vectors[b, start:] = np.stack([v for _, v in found])
        inputs.event_types[b, start:] = [i.event_type for i, _ in found]
        inputs.gaps_s[b, start:] = [(newest[b] - i.timestamp_ms) / 1000.0 for i, _ in found]
        inputs.mask[b, start:] = True
    return inputs


class ExportedTower:
    """The ``torch.export``-ed user tower of a trained version."""

    blocking = True

    def __init__(self, module: torch.nn.Module, *, max_len: int, dim: int,
                 device: torch.device, bf16: bool = False) -> None:
        self._module = module
        self.max_len = max_len
        self.dim = dim
        self.device = device
        self.bf16 = bf16  # autocast: ~1.8x on a CPU with native bf16, cosine 0.99999 to fp32

    @classmethod
    def load(cls, path: Path, *, max_len: int, dim: int, device: torch.device,
             bf16: bool = False) -> ExportedTower:
        try:
            module = torch.export.load(str(path)).module().to(device)
        except Exception as error:  # torch raises many kinds on a bad file
            raise ModelLoadError(f"{path}: cannot load the user encoder ({error})") from None
        return cls(module, max_len=max_len, dim=dim, device=device, bf16=bf16)

    @torch.inference_mode()
    def encode(
        self, histories: Sequence[Sequence[Interaction]], lookup: VectorLookup
    ) -> list[np.ndarray | None]:
        inputs = tower_inputs(histories, lookup, max_len=self.max_len, dim=self.dim)
        vectors: list[np.ndarray | None] = [None] * len(histories)
        if not inputs.rows:
            return vectors
        arrays = (inputs.item_vectors, inputs.event_types, inputs.gaps_s, inputs.mask)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            output = self._module(*(torch.from_numpy(a).to(self.device) for a in arrays))
        for row, vector in zip(inputs.rows, output.float().cpu().numpy(), strict=True):
            vectors[row] = vector
        return vectors
