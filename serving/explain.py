"""Why an item is shown, in words a shop can display, computed from vectors already at hand."""

from __future__ import annotations

import numpy as np


def anchors(shown: np.ndarray, recent: np.ndarray, same: np.ndarray | None = None) -> np.ndarray:
    """For each shown item [n, dim], the row of the most similar recent item [r, dim], or
    -1 when there is none other than itself.

    Both are unit vectors, so the inner product is the cosine. `same` [n, r] marks pairs
    that are one item (a seen item shown again): an item never explains itself.
    """
    similarity = shown @ recent.T  # [n, r]
    if same is None:  # unit vectors: every similarity is finite, each row has an anchor
        return np.argmax(similarity, axis=1)
    similarity = np.where(same, -np.inf, similarity)
    best = np.argmax(similarity, axis=1)  # [n]
    return np.where(np.isfinite(similarity[np.arange(len(best)), best]), best, -1)


def similar_to(name: str) -> str:
    """The reason of an item close to something the user interacted with."""
    return f"similar to {name}"


def mean_vector(vectors: np.ndarray) -> np.ndarray | None:
    """The unit mean of `vectors` [n, dim], or None when there are none or they cancel out."""
    if len(vectors) == 0:
        return None
    mean = vectors.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if not np.isfinite(norm) or norm < 1e-6:
        return None
    return (mean / norm).astype(np.float32)
