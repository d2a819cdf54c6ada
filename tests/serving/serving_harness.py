"""Helpers of the serving tests: vectors, the numpy reference search, artifact dirs, and
``python -m serving`` as a child process (its environment, its output as it comes)."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from conftest import eventually

from serving.settings import ServingSettings


def unit_rows(rng: np.random.Generator, n: int, dim: int, clusters: int = 5) -> np.ndarray:
    """`n` L2-normalised float32 rows around `clusters` centres [n, dim]."""
    centres = rng.normal(size=(clusters, dim))
    rows = centres[rng.integers(0, clusters, size=n)] + 0.3 * rng.normal(size=(n, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def exact_nearest(
    vectors: Mapping[str, np.ndarray], query: np.ndarray, k: int, excluded: set[str] | None = None
) -> list[str]:
    """The `k` items with the highest cosine similarity to `query`, by brute force."""
    excluded = excluded or set()
    ids = [item_id for item_id in vectors if item_id not in excluded]
    matrix = np.stack([vectors[item_id] for item_id in ids]).astype(np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    scores = matrix @ (query / np.linalg.norm(query))
    order = np.argsort(-scores, kind="stable")[:k]
    return [ids[i] for i in order]


def write_artifact(root: Path, version: str, item_ids: list[str], vectors: np.ndarray) -> Path:
    """A production artifact per docs/contracts.md §4 (index.faiss omitted: serving rebuilds)."""
    version_dir = root / version
    version_dir.mkdir(parents=True)
    manifest = {
        "format": 1,
        "version": version,
        "created_at": "2026-11-22T23:00:00+00:00",
        "dim": int(vectors.shape[1]),
        "item_encoder": {"kind": "pretrained", "name": "all-MiniLM-L6-v2"},
        "user_encoder": {"kind": "weighted_mean"},
        "data_window": {"topic": "events.enriched", "partitions": {"0": [0, 10]}},
        "n_events": 10,
        "n_items": len(item_ids),
        "metrics": {},
        "config": {},
    }
    (version_dir / "manifest.json").write_text(json.dumps(manifest))
    (version_dir / "item_ids.json").write_text(json.dumps(item_ids))
    np.save(version_dir / "item_vectors.npy", vectors.astype(np.float32))
    (root / "production.json").write_text(
        json.dumps({"version": version, "previous": None, "updated_at": "2026-11-22T23:00:00+00:00"})
    )
    return version_dir


def server_env(settings: ServingSettings) -> dict[str, str]:
    """This process's environment with `settings` as ``STREAMREC_SERVING_*`` variables
    (lists as JSON, as users write them)."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is not None and value != []:
            env[f"STREAMREC_SERVING_{name.upper()}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return env


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


class Lines:
    """Everything the server writes, read as it comes (a full pipe would block it)."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.text = ""
        self._task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.text += line.decode(errors="replace")

    async def wait_for(self, pattern: str, timeout_s: float = 120.0) -> re.Match[str]:
        found: list[re.Match[str]] = []

        async def seen() -> bool:
            match = re.search(pattern, self.text)
            if match:
                found.append(match)
            return match is not None or self._task.done()

        await eventually(seen, timeout_s)
        assert found, f"{pattern!r} not in:\n{self.text}"
        return found[0]

    async def close(self) -> None:
        await asyncio.wait_for(self._task, 60)
