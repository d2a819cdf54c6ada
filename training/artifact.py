"""The versioned artifact store of docs/contracts.md section 4.

Each version is written to a hidden temporary directory and renamed into place, so a
reader sees either no version directory or a complete one; ``production.json`` is
replaced atomically in the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from training.errors import ArtifactError

FORMAT = 1
VERSION_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_SAME_SECOND = 999
PRODUCTION = "production.json"
MANIFEST = "manifest.json"
ITEM_IDS = "item_ids.json"
ITEM_VECTORS = "item_vectors.npy"
INDEX = "index.faiss"


@dataclass(frozen=True)
class Production:
    """Content of ``production.json``."""

    version: str
    previous: str | None
    updated_at: str


def new_version(now: datetime, taken: Collection[str]) -> str:
    """``20261122T230000Z``, or with ``-001``.. appended when that is taken.

    The suffix is zero-padded so versions keep sorting in creation order.
    """
    base = now.astimezone(UTC).strftime(VERSION_FORMAT)
    if base not in taken:
        return base
    for number in range(1, MAX_SAME_SECOND + 1):
        candidate = f"{base}-{number:03d}"
        if candidate not in taken:
            return candidate
    raise ArtifactError(f"more than {MAX_SAME_SECOND} versions created in the second {base}")


def build_manifest(
    *,
    version: str,
    created_at: datetime,
    dim: int,
    data_window: Mapping[str, Any],
    n_events: int,
    n_items: int,
    metrics: Mapping[str, Any],
    config: Mapping[str, Any],
    encoders: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of one version, with the fields in contract order.

    `encoders` replaces the default ``item_encoder``/``user_encoder`` entries (the
    pretrained text encoder, weighted-mean user vectors) and may add ``scoring``.
    """
    encoders = dict(encoders or {})
    return {
        "format": FORMAT,
        "version": version,
        "created_at": created_at.astimezone(UTC).isoformat(),
        "dim": dim,
        "item_encoder": encoders.pop(
            "item_encoder", {"kind": "pretrained", "name": "all-MiniLM-L6-v2"}
        ),
        "user_encoder": encoders.pop("user_encoder", {"kind": "weighted_mean"}),
        **encoders,
        "data_window": dict(data_window),
        "n_events": n_events,
        "n_items": n_items,
        "metrics": dict(metrics),
        "config": dict(config),
    }


def data_window(topic: str, ranges: Mapping[int, tuple[int, int]]) -> dict[str, Any]:
    """``{"topic": ..., "partitions": {"0": [start, end], ...}}``, partitions in order."""
    return {
        "topic": topic,
        "partitions": {str(p): [start, end] for p, (start, end) in sorted(ranges.items())},
    }


def write_artifact(
    store: Path,
    *,
    now: datetime,
    item_ids: Sequence[str],
    vectors: np.ndarray,
    window: Mapping[str, Any],
    n_events: int,
    metrics: Mapping[str, Any],
    config: Mapping[str, Any],
    write_encoders: Callable[[Path], Mapping[str, Any]] | None = None,
) -> Path:
    """Write a new version and return its directory.

    `write_encoders(directory)`, when given, writes the model's own files (encoders,
    checkpoint) into the not yet visible version directory and returns the manifest
    entries that describe them.
    """
    if vectors.ndim != 2 or vectors.shape[0] != len(item_ids):
        raise ArtifactError(
            f"{len(item_ids)} item ids but vectors of shape {tuple(vectors.shape)}"
        )
    if len(set(item_ids)) != len(item_ids):
        raise ArtifactError("item ids are not unique")
    store.mkdir(parents=True, exist_ok=True)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    staging = store / f".tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        _write_json(staging / ITEM_IDS, list(item_ids))
        with open(staging / ITEM_VECTORS, "wb") as handle:
            np.save(handle, vectors)
            _sync(handle)
        index = faiss.IndexFlatIP(vectors.shape[1])  # FAISS ids are the row numbers
        index.add(vectors)
        faiss.write_index(index, str(staging / INDEX))
        encoders = dict(write_encoders(staging)) if write_encoders is not None else None
        while True:
            version = new_version(now, _all_names(store))
            manifest = build_manifest(
                version=version,
                created_at=now,
                dim=int(vectors.shape[1]),
                data_window=window,
                n_events=n_events,
                n_items=len(item_ids),
                metrics=metrics,
                config=config,
                encoders=encoders,
            )
            _write_json(staging / MANIFEST, manifest)
            target = store / version
            try:
                os.rename(staging, target)
            except OSError:
                if target.exists():
                    continue  # another writer took the name between the check and the rename
                raise
            _sync_dir(store)
            return target
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def promote(store: Path, version: str, now: datetime) -> Production:
    """Point ``production.json`` at `version`; the version it replaces becomes previous."""
    if not (store / version / MANIFEST).is_file():
        raise ArtifactError(f"{store / version}: no such version (no {MANIFEST})")
    current = read_production(store)
    if current is None:
        previous = None
    elif current.version == version:
        previous = current.previous
    else:
        previous = current.version
    pointer = Production(
        version=version, previous=previous, updated_at=now.astimezone(UTC).isoformat()
    )
    staging = store / f".{PRODUCTION}.{uuid.uuid4().hex}.tmp"
    _write_json(staging, asdict(pointer))
    os.replace(staging, store / PRODUCTION)
    _sync_dir(store)
    return pointer


def read_production(store: Path) -> Production | None:
    """The production pointer, or None when the store has none yet."""
    path = store / PRODUCTION
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return Production(
            version=str(data["version"]),
            previous=data["previous"],
            updated_at=str(data["updated_at"]),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise ArtifactError(f"{path}: malformed production pointer ({error})") from None


def list_versions(store: Path) -> list[str]:
    """Complete versions (directories with a manifest), oldest first."""
    if not store.is_dir():
        return []
    return sorted(
        entry.name
        for entry in store.iterdir()
        if entry.is_dir() and not entry.name.startswith(".") and (entry / MANIFEST).is_file()
    )


def read_manifest(store: Path, version: str) -> dict[str, Any]:
    """The manifest of one version."""
    path = store / version / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: no such manifest")
    return dict(json.loads(path.read_text()))


def read_item_vectors(store: Path, version: str) -> tuple[list[str], np.ndarray]:
    """``(item_ids, vectors)`` of one version; row i of vectors belongs to item_ids[i]."""
    directory = store / version
    item_ids = json.loads((directory / ITEM_IDS).read_text())
    vectors = np.load(directory / ITEM_VECTORS)
    if vectors.shape[0] != len(item_ids):
        raise ArtifactError(f"{directory}: {len(item_ids)} ids but {vectors.shape[0]} vectors")
    return item_ids, vectors


def _all_names(store: Path) -> set[str]:
    return {entry.name for entry in store.iterdir()} if store.is_dir() else set()


def _write_json(path: Path, data: object) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        _sync(handle)


def _sync(handle: Any) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _sync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
