"""The production model version and its item vectors, from the artifact store (contracts §4)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import ArtifactError

log = logging.getLogger(__name__)

BOOTSTRAP_VERSION = "base"


@dataclass(frozen=True)
class ModelState:
    """A model version with the item vectors its index starts from (row i is item_ids[i])."""

    version: str
    dim: int
    item_ids: list[str]
    vectors: np.ndarray  # float32 [n_items, dim]


def bootstrap_state(dim: int) -> ModelState:
    """The pretrained model before any artifact: no vectors yet, they arrive on item-vectors."""
    return ModelState(BOOTSTRAP_VERSION, dim, [], np.empty((0, dim), dtype=np.float32))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ArtifactError(f"cannot read {path}: {error}") from error


def production_version(artifact_dir: Path) -> str:
    """The version ``production.json`` names, or the bootstrap version without one."""
    pointer = artifact_dir / "production.json"
    if not pointer.exists():
        log.info("no %s: the production version is the bootstrap model %r", pointer, BOOTSTRAP_VERSION)
        return BOOTSTRAP_VERSION
    version = _read_json(pointer).get("version")
    if not isinstance(version, str) or not version or Path(version).name != version:
        raise ArtifactError(f"{pointer} names no valid version: {version!r}")
    return version


def load_production(artifact_dir: Path, default_dim: int) -> ModelState:
    """The version named by ``production.json``, or the bootstrap state without one."""
    version = production_version(artifact_dir)
    if not (artifact_dir / "production.json").exists():
        return bootstrap_state(default_dim)
    return load_version(artifact_dir / version, version)


def load_version(version_dir: Path, version: str) -> ModelState:
    """Read and check one version directory's manifest, item ids and item vectors."""
    manifest = _read_json(version_dir / "manifest.json")
    if manifest.get("version") != version:
        raise ArtifactError(
            f"{version_dir}/manifest.json is version {manifest.get('version')!r}, expected {version!r}"
        )
    dim = manifest.get("dim")
    if not isinstance(dim, int) or dim < 1:
        raise ArtifactError(f"{version_dir}/manifest.json has no valid dim: {dim!r}")
    item_ids = _read_json(version_dir / "item_ids.json")
    if not isinstance(item_ids, list) or not all(isinstance(i, str) and i for i in item_ids):
        raise ArtifactError(f"{version_dir}/item_ids.json is not a list of item ids")
    try:
        vectors = np.load(version_dir / "item_vectors.npy", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ArtifactError(f"cannot read {version_dir}/item_vectors.npy: {error}") from error
    if vectors.shape != (len(item_ids), dim):
        raise ArtifactError(
            f"{version_dir}/item_vectors.npy has shape {vectors.shape}, "
            f"expected ({len(item_ids)}, {dim})"
        )
    if not np.isfinite(vectors).all() or (len(vectors) and not np.abs(vectors).sum(axis=1).all()):
        raise ArtifactError(f"{version_dir}/item_vectors.npy holds NaN, infinity or a zero row")
    log.info("model %s: %s item vectors of dimension %s", version, len(item_ids), dim)
    return ModelState(version, dim, item_ids, vectors.astype(np.float32, copy=False))
