"""Which model version the worker runs and what its artifact holds (docs/contracts.md §4).

``production.json`` names the version at start; without it the worker runs the bootstrap
model ``base``, the pretrained all-MiniLM-L6-v2 with weighted-mean user vectors. Later
versions arrive as releases on ``models`` (:mod:`streams.releases`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streams.errors import ArtifactError

BASE_VERSION = "base"
PRODUCTION = "production.json"
MANIFEST = "manifest.json"
ITEM_IDS = "item_ids.json"
ITEM_VECTORS = "item_vectors.npy"


@dataclass(frozen=True)
class ModelChoice:
    """One version's files as the worker uses them.

    ``head`` is the projection of a fine-tuned item encoder (``item_head.npz``), and
    ``user_encoder`` the exported user tower; None for the pretrained encoder and for
    weighted-mean user vectors. ``directory`` is None for the bootstrap ``base``.
    """

    version: str
    encoder_dir: Path
    directory: Path | None = None
    head: Path | None = None
    text_max_length: int | None = None
    user_encoder: Path | None = None
    max_len: int = 0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{path}: unreadable ({error})") from None


def _read_object(path: Path) -> dict[str, Any]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: not a JSON object")
    return data


def artifact_path(uri: str) -> Path:
    """The local directory of an artifact uri (a path or a ``file://`` URL)."""
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if "://" in uri:
        raise ArtifactError(f"unsupported artifact uri {uri!r}: only local directories")
    return Path(uri)


def read_version(directory: Path, version: str, pretrained_dir: Path) -> ModelChoice:
    """The files of the version stored in `directory`; a broken version is an error."""
    manifest = _read_object(directory / MANIFEST)
    if manifest.get("version", version) != version:
        raise ArtifactError(f"{directory}: manifest is of version {manifest.get('version')!r}")
    item_encoder = manifest.get("item_encoder") or {}
    user_encoder = manifest.get("user_encoder") or {"kind": "weighted_mean"}
    choice = ModelChoice(version, pretrained_dir, directory)
    if item_encoder.get("kind") != "pretrained":
        encoder_dir = directory / str(item_encoder.get("dir", "item_encoder"))
        if not (encoder_dir / "config.json").is_file():
            raise ArtifactError(
                f"{directory}: item encoder kind {item_encoder.get('kind')!r} "
                f"but no model in {encoder_dir}"
            )
        head = directory / str(item_encoder.get("head", "item_head.npz"))
        max_length = item_encoder.get("max_length")
        choice = ModelChoice(
            version, encoder_dir, directory, head if head.is_file() else None,
            int(max_length) if max_length else None,
        )
    if user_encoder.get("kind") == "weighted_mean":
        return choice
    if user_encoder.get("kind") != "transformer":
        raise ArtifactError(f"{directory}: unknown user encoder {user_encoder.get('kind')!r}")
    program = directory / str(user_encoder.get("file", "user_encoder.pt2"))
    max_len = user_encoder.get("max_len")
    if not program.is_file() or not isinstance(max_len, int) or max_len < 1:
        raise ArtifactError(f"{directory}: transformer user encoder without file or max_len")
    return ModelChoice(choice.version, choice.encoder_dir, directory, choice.head,
                       choice.text_max_length, program, max_len)


def choose_model(artifact_dir: Path, pretrained_dir: Path) -> ModelChoice:
    """The production version; ``base`` and `pretrained_dir` when the store has no
    production pointer. A pointer to a broken version is an error."""
    pointer = artifact_dir / PRODUCTION
    if not pointer.is_file():
        return ModelChoice(BASE_VERSION, pretrained_dir)
    version = _read_object(pointer).get("version")
    if not isinstance(version, str) or not version:
        raise ArtifactError(f"{pointer}: no version")
    return read_version(artifact_dir / version, version, pretrained_dir)


def item_vectors(choice: ModelChoice) -> dict[str, np.ndarray]:
    """The version's stored item vectors by item id (float32 [dim] each); none for ``base``."""
    if choice.directory is None or not (choice.directory / ITEM_VECTORS).is_file():
        return {}
    ids = _read_json(choice.directory / ITEM_IDS)
    try:
        matrix = np.load(choice.directory / ITEM_VECTORS).astype(np.float32)
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{choice.directory / ITEM_VECTORS}: unreadable ({error})") from None
    if not isinstance(ids, list) or matrix.ndim != 2 or len(ids) != len(matrix):
        raise ArtifactError(f"{choice.directory}: item ids and vectors do not match")
    return {str(item_id): row for item_id, row in zip(ids, matrix, strict=True)}
