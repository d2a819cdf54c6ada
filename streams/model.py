"""Which model version the worker runs, read once at start from the artifact store.

``production.json`` names the version (docs/contracts.md §4); without it the worker
runs the bootstrap model ``base``, the pretrained all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.errors import ArtifactError

BASE_VERSION = "base"
PRODUCTION = "production.json"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ModelChoice:
    """The version stamped on vectors, and the item encoder that makes them."""

    version: str
    encoder_dir: Path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{path}: unreadable ({error})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: not a JSON object")
    return data


def choose_model(artifact_dir: Path, pretrained_dir: Path) -> ModelChoice:
    """The production version and its item encoder; ``base`` and `pretrained_dir` when the
    store has no production pointer. A pointer to a broken version is an error."""
    pointer = artifact_dir / PRODUCTION
    if not pointer.is_file():
        return ModelChoice(BASE_VERSION, pretrained_dir)
    version = _read_json(pointer).get("version")
    if not isinstance(version, str) or not version:
        raise ArtifactError(f"{pointer}: no version")
    manifest = _read_json(artifact_dir / version / MANIFEST)
    item_encoder = manifest.get("item_encoder") or {}
    if item_encoder.get("kind") == "pretrained":
        return ModelChoice(version, pretrained_dir)
    encoder_dir = artifact_dir / version / "item_encoder"
    if not (encoder_dir / "config.json").is_file():
        raise ArtifactError(
            f"{artifact_dir / version}: item encoder kind {item_encoder.get('kind')!r} "
            f"but no model in {encoder_dir}"
        )
    return ModelChoice(version, encoder_dir)
