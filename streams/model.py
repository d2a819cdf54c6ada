"""Which model version the worker runs and which of its files it loads (docs/contracts.md §4).

``production.json`` names the version at start; without it the worker runs the bootstrap
model ``base``, the pretrained all-MiniLM-L6-v2 with weighted-mean user vectors. Later
versions arrive as releases on ``models`` (:mod:`streams.releases`). Reading and checking
the store (version names, manifests, item vectors) is :mod:`contracts.artifact`'s; this
module picks the worker's own files, the item and user encoders, out of a manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from contracts import artifact
from contracts.artifact import BASE_VERSION
from contracts.itemtext import MAX_TOKENS
from streams.errors import ArtifactError

__all__ = ["BASE_VERSION", "ModelChoice", "artifact_path", "choose_model", "item_vectors",
           "read_version"]


@dataclass(frozen=True)
class ModelChoice:
    """One version's files as the worker uses them.

    ``head`` is the projection of a fine-tuned item encoder (``item_head.npz``), and
    ``user_encoder`` the exported user tower; None for the pretrained encoder and for
    weighted-mean user vectors. ``directory`` is None for the bootstrap ``base``.
    ``text_max_length`` is the token limit the version's item vectors were embedded with.
    """

    version: str
    encoder_dir: Path
    directory: Path | None = None
    head: Path | None = None
    text_max_length: int = MAX_TOKENS
    user_encoder: Path | None = None
    max_len: int = 0
    made_at_ms: int = 0  # the version's creation time, when its item vectors were made
    # the shortest length the user tower takes (its padding can be cut down to the
    # longest history of a batch); 0: every call is max_len long (older exports)
    min_len: int = 0


def artifact_path(uri: str) -> Path:
    """The local directory of an artifact uri (a path or a ``file://`` URL)."""
    with artifact.errors_as(ArtifactError):
        return artifact.artifact_path(uri)


def read_version(directory: Path, version: str, pretrained_dir: Path) -> ModelChoice:
    """The files of the version stored in `directory`; a broken version is an error."""
    with artifact.errors_as(ArtifactError):
        manifest = artifact.read_manifest(directory, version)
    return _choice(manifest, directory, version, pretrained_dir)


def _choice(manifest: dict[str, Any], directory: Path, version: str,
            pretrained_dir: Path) -> ModelChoice:
    item_encoder = manifest.get("item_encoder") or {}
    user_encoder = manifest.get("user_encoder") or {"kind": "weighted_mean"}
    with artifact.errors_as(ArtifactError):
        text_max_length = artifact.text_max_length(manifest)
    made_at_ms = _created_ms(manifest)
    choice = ModelChoice(version, pretrained_dir, directory, text_max_length=text_max_length,
                         made_at_ms=made_at_ms)
    if item_encoder.get("kind") != "pretrained":
        encoder_dir = directory / str(item_encoder.get("dir", artifact.ITEM_ENCODER))
        if not (encoder_dir / "config.json").is_file():
            raise ArtifactError(
                f"{directory}: item encoder kind {item_encoder.get('kind')!r} "
                f"but no model in {encoder_dir}"
            )
        head = directory / str(item_encoder.get("head", artifact.ITEM_HEAD))
        choice = ModelChoice(version, encoder_dir, directory, head if head.is_file() else None,
                             text_max_length, made_at_ms=made_at_ms)
    if user_encoder.get("kind") == "weighted_mean":
        return choice
    if user_encoder.get("kind") != "transformer":
        raise ArtifactError(f"{directory}: unknown user encoder {user_encoder.get('kind')!r}")
    program = directory / str(user_encoder.get("file", artifact.USER_ENCODER))
    max_len = user_encoder.get("max_len")
    if not program.is_file() or not isinstance(max_len, int) or max_len < 1:
        raise ArtifactError(f"{directory}: transformer user encoder without file or max_len")
    min_len = user_encoder.get("min_len")
    if min_len is not None and (not isinstance(min_len, int) or not 1 <= min_len <= max_len):
        raise ArtifactError(f"{directory}: user encoder min_len {min_len!r} is not a length "
                            f"from 1 to max_len {max_len}")
    return ModelChoice(choice.version, choice.encoder_dir, directory, choice.head,
                       choice.text_max_length, program, max_len, made_at_ms, min_len or 0)


def _created_ms(manifest: dict[str, Any]) -> int:
    """The manifest's ``created_at`` in ms (0 when absent or unreadable)."""
    try:
        return int(datetime.fromisoformat(str(manifest["created_at"])).timestamp() * 1000)
    except (KeyError, ValueError):
        return 0


def choose_model(artifact_dir: Path, pretrained_dir: Path) -> ModelChoice:
    """The production version; ``base`` and `pretrained_dir` when the store has no
    production pointer. A pointer to a broken version is an error."""
    with artifact.errors_as(ArtifactError):
        version = artifact.production_version(artifact_dir)
    if version is None:
        return ModelChoice(BASE_VERSION, pretrained_dir)
    return read_version(artifact_dir / version, version, pretrained_dir)


def item_vectors(choice: ModelChoice) -> dict[str, np.ndarray]:
    """The version's stored item vectors by item id (float32 [dim] each); none for ``base``.

    They are checked as serving checks them: a version with NaN, infinite or zero rows,
    or ids and vectors that do not match, is refused."""
    return stored_items(choice)[0]


def stored_items(choice: ModelChoice) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """:func:`item_vectors`, and the hash of the text each was made from (the version's
    ``item_text_hashes.npy``; empty for ``base`` and for versions written without it)."""
    if choice.directory is None:
        return {}, {}
    with artifact.errors_as(ArtifactError):
        stored = artifact.read_version(choice.directory, choice.version)
        hashes = artifact.read_text_hashes(choice.directory, stored.item_ids)
    return dict(zip(stored.item_ids, stored.vectors, strict=True)), hashes
