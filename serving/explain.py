"""Why an item is shown, in words a shop can display, computed from vectors already at hand."""

from __future__ import annotations

import numpy as np


def anchors(shown: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """For each shown item [n, dim], the row of the most similar recent item [r, dim].

    Both are unit vectors, so the inner product is the cosine. Returns int [n]; r >= 1.
    """
    return np.argmax(shown @ recent.T, axis=1)  # [n, r] -> [n]


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
