"""Score with a stored version (from its files alone, as serving would) and decide
whether a candidate replaces production."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from contracts.artifact import read_version
from training.quality import Scorer
from training.sequences import Sequences, windows


def passes_gate(
    candidate: dict[str, float], production: dict[str, float] | None, *, metric: str,
    min_gain: float,
) -> bool:
    """True when there is no production yet, or the candidate's `metric` beats
    production's by more than `min_gain` (absolute)."""
    if production is None:
        return True
    return candidate[metric] > production[metric] + min_gain


def artifact_scorer(
    store: Path, version: str, item_ids: list[str], seqs: Sequences, *, max_history: int = 50
) -> Scorer:
    """Scores of every item of `item_ids` (rows 1.. of `seqs`) by a stored version.

    Items the version does not know score -inf (it cannot recommend them). The user
    vector comes from the version's ``user_encoder.pt2`` when it has one, else it is the
    normalised mean of the newest `max_history` item vectors (the bootstrap model).
    """
    stored_version = read_version(store / version, version)
    manifest, stored_ids, stored = (stored_version.manifest, stored_version.item_ids,
                                    stored_version.vectors)
    position = {item: row for row, item in enumerate(stored_ids)}
    dim = stored.shape[1]
    table = np.zeros((len(item_ids) + 1, dim), dtype=np.float32)  # row 0 padding
    known = np.zeros(len(item_ids) + 1, dtype=bool)
    for row, item in enumerate(item_ids, start=1):
        if item in position:
            table[row] = stored[position[item]]
            known[row] = True
    spec = manifest.get("user_encoder", {})
    encoder = None
    if spec.get("kind") == "transformer":
        encoder = torch.export.load(str(store / version / spec["file"])).module()
        max_len = int(spec["max_len"])
    else:
        max_len = max_history

    def score(users: np.ndarray, ends: np.ndarray) -> np.ndarray:
        w = windows(seqs, users, ends, max_len)
        mask = w.mask & known[w.items]  # unknown items are left out of the history
        vectors = table[w.items] * mask[..., None]
        if encoder is not None:
            with torch.no_grad():
                user = encoder(torch.from_numpy(vectors), torch.from_numpy(w.types * mask),
                               torch.from_numpy(w.gaps_s * mask), torch.from_numpy(mask)).numpy()
        else:
            user = vectors.sum(1)
            user /= np.maximum(np.linalg.norm(user, axis=1, keepdims=True), 1e-12)
        scores = user @ table[1:].T
        scores[:, ~known[1:]] = -np.inf
        return scores

    return score
