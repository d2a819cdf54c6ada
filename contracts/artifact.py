"""The model artifact store of docs/contracts.md §4: its file names, its one reader and
its one writer, the ``production.json`` pointer and artifact uris.

Each version is written to a hidden temporary directory and renamed into place, so a
reader sees either no version directory or a complete one; ``production.json`` is
replaced atomically in the same way. The reader trusts nothing: a version name is a
plain name (no path separator, no ``..``), the manifest is an object of that version
with a positive ``dim``, and the item vectors are float32 ``[len(item_ids), dim]``,
finite, with no zero row. Every refusal is an :class:`ArtifactError`; each deployable
translates it into its own error type at its edge (:func:`errors_as`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from contracts.itemtext import MAX_TOKENS, text_hash

FORMAT = 1
BASE_VERSION = "base"  # the bootstrap model before any artifact: pretrained encoder, no files
VERSION_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_SAME_SECOND = 999
# A version is a directory name: letters, digits, ``.``, ``_``, ``-``; never ``..``.
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

PRODUCTION = "production.json"
MANIFEST = "manifest.json"
ITEM_IDS = "item_ids.json"
ITEM_VECTORS = "item_vectors.npy"
# uint64 [n_items], aligned with item_ids: contracts.itemtext.text_hash of the text each
# item's vector was made from (optional: versions written before it have none)
ITEM_TEXT_HASHES = "item_text_hashes.npy"
INDEX = "index.faiss"
USER_ENCODER = "user_encoder.pt2"
ITEM_ENCODER = "item_encoder"
ITEM_HEAD = "item_head.npz"
CHECKPOINT = "model.pt"
PRETRAINED_MODEL = "all-MiniLM-L6-v2"  # the pretrained text encoder: base's, and fine-tuning's start


class ArtifactError(Exception):
    """An artifact store, version or uri breaks the contract or cannot be read or written."""


class UnsafeVersion(ArtifactError):
    """A version name is not a plain directory name (a path separator, ``..``, odd characters)."""


class MissingFile(ArtifactError):
    """A file the contract requires is not there."""


class BadManifest(ArtifactError):
    """``manifest.json`` or ``production.json`` is unreadable or breaks the contract."""


class BadVectors(ArtifactError):
    """The item ids or vectors are unreadable, of the wrong shape or dtype, or not finite."""


class UnsupportedUri(ArtifactError):
    """An artifact uri that is not a local directory."""


@contextmanager
def errors_as(error_type: Callable[[str], Exception]) -> Iterator[None]:
    """Re-raise an :class:`ArtifactError` inside as `error_type` (a deployable's own)."""
    try:
        yield
    except ArtifactError as error:
        raise error_type(str(error)) from error


def check_version(version: object) -> str:
    """`version` when it is a safe version name; else :class:`UnsafeVersion`."""
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version) or ".." in version:
        raise UnsafeVersion(f"{version!r} is not a valid version name "
                            f"(letters, digits, '.', '_', '-'; no path, no '..')")
    return version


def artifact_path(uri: str) -> Path:
    """The local directory of an artifact uri (a path or a ``file://`` url)."""
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if "://" in uri:
        raise UnsupportedUri(f"unsupported artifact uri {uri!r}: only local directories")
    return Path(uri)


# --- reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredVersion:
    """One version's manifest with its item vectors (row i is item_ids[i])."""

    version: str
    dim: int
    item_ids: list[str]
    vectors: np.ndarray  # float32 [n_items, dim]
    manifest: dict[str, Any]


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise MissingFile(f"cannot read {path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BadManifest(f"cannot read {path}: {error}") from error


def read_manifest(directory: Path, version: str) -> dict[str, Any]:
    """The checked manifest of the version stored in `directory`."""
    check_version(version)
    path = directory / MANIFEST
    manifest = _read_json(path)
    if not isinstance(manifest, dict):
        raise BadManifest(f"{path} is not a JSON object")
    if manifest.get("version") != version:
        raise BadManifest(f"{path}: manifest is version {manifest.get('version')!r}, "
                          f"expected {version!r}")
    dim = manifest.get("dim")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise BadManifest(f"{path} has no valid dim: {dim!r}")
    return manifest


def read_version(directory: Path, version: str) -> StoredVersion:
    """Read and check the manifest, item ids and item vectors of one version directory."""
    manifest = read_manifest(directory, version)
    dim = int(manifest["dim"])
    try:
        item_ids = _read_json(directory / ITEM_IDS)
    except BadManifest as error:
        raise BadVectors(str(error)) from error
    if not isinstance(item_ids, list) or not all(isinstance(i, str) and i for i in item_ids):
        raise BadVectors(f"{directory / ITEM_IDS} is not a list of item ids")
    if len(set(item_ids)) != len(item_ids):
        raise BadVectors(f"{directory / ITEM_IDS}: item ids are not unique")
    path = directory / ITEM_VECTORS
    if not path.is_file():
        raise MissingFile(f"cannot read {path}: no such file")
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise BadVectors(f"cannot read {path}: {error}") from error
    if vectors.shape != (len(item_ids), dim):
        raise BadVectors(f"{path} has shape {vectors.shape}, expected ({len(item_ids)}, {dim}): "
                         f"item ids and vectors do not match")
    if vectors.dtype != np.float32:
        raise BadVectors(f"{path} is {vectors.dtype}, expected float32")
    if not np.isfinite(vectors).all() or (len(vectors) and not np.abs(vectors).sum(axis=1).all()):
        raise BadVectors(f"{path} holds NaN, infinity or a zero row")
    return StoredVersion(version, dim, item_ids, vectors, manifest)


def read_text_hashes(directory: Path, item_ids: Sequence[str]) -> dict[str, int]:
    """Item id -> hash of the text its vector was made from (empty for a version without
    :data:`ITEM_TEXT_HASHES`); a file that does not match the item ids is refused."""
    path = directory / ITEM_TEXT_HASHES
    if not path.is_file():
        return {}
    try:
        hashes = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise BadVectors(f"cannot read {path}: {error}") from error
    if hashes.shape != (len(item_ids),) or hashes.dtype != np.uint64:
        raise BadVectors(f"{path} is {hashes.dtype} {hashes.shape}, expected uint64 "
                         f"({len(item_ids)},)")
    return dict(zip(item_ids, (int(h) for h in hashes), strict=True))


def text_max_length(manifest: Mapping[str, Any]) -> int:
    """The tokens of an item text the version's item encoder sees: the manifest's
    ``item_encoder.max_length``, or :data:`~contracts.itemtext.MAX_TOKENS` where it names
    none (``base``, and versions written before manifests carried it, at that default)."""
    item_encoder = manifest.get("item_encoder")
    limit = item_encoder.get("max_length") if isinstance(item_encoder, dict) else None
    if limit is None:
        return MAX_TOKENS
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise BadManifest(f"version {manifest.get('version')!r}: item_encoder.max_length "
                          f"{limit!r} is not a positive integer")
    return limit


def list_versions(store: Path) -> list[str]:
    """Complete versions (directories with a manifest), oldest first."""
    if not store.is_dir():
        return []
    return sorted(
        entry.name
        for entry in store.iterdir()
        if entry.is_dir() and not entry.name.startswith(".") and (entry / MANIFEST).is_file()
    )


# --- the production pointer --------------------------------------------------------------


@dataclass(frozen=True)
class Production:
    """Content of ``production.json``."""

    version: str
    previous: str | None
    updated_at: str


def read_production(store: Path) -> Production | None:
    """The production pointer, or None when the store has none yet."""
    path = store / PRODUCTION
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        pointer = Production(version=data["version"], previous=data["previous"],
                             updated_at=str(data["updated_at"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BadManifest(f"{path}: malformed production pointer ({error})") from None
    try:
        check_version(pointer.version)
        if pointer.previous is not None:
            check_version(pointer.previous)
    except UnsafeVersion as error:
        raise UnsafeVersion(f"{path}: malformed production pointer ({error})") from None
    return pointer


def production_version(store: Path) -> str | None:
    """The version ``production.json`` names, checked; None without a pointer.

    Only ``version`` is required here, so a hand-written pointer still starts a process."""
    path = store / PRODUCTION
    if not path.is_file():
        return None
    data = _read_json(path)
    version = data.get("version") if isinstance(data, dict) else None
    try:
        return check_version(version)
    except UnsafeVersion as error:
        raise UnsafeVersion(f"{path} names no valid version: {error}") from None


def write_production(store: Path, pointer: Production) -> None:
    """Replace ``production.json`` atomically (a reader sees the old or the new one)."""
    check_version(pointer.version)
    staging = store / f".{PRODUCTION}.{uuid.uuid4().hex}.tmp"
    try:
        _write_json(staging, asdict(pointer))
        os.replace(staging, store / PRODUCTION)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    _sync_dir(store)


def promote(store: Path, version: str, now: datetime) -> Production:
    """Point ``production.json`` at `version`; the version it replaces becomes previous."""
    check_version(version)
    if not (store / version / MANIFEST).is_file():
        raise MissingFile(f"{store / version}: no such version (no {MANIFEST})")
    current = read_production(store)
    if current is None:
        previous = None
    elif current.version == version:
        previous = current.previous
    else:
        previous = current.version
    pointer = Production(version=version, previous=previous,
                         updated_at=now.astimezone(UTC).isoformat())
    write_production(store, pointer)
    return pointer


# --- writing -----------------------------------------------------------------------------


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
            "item_encoder", {"kind": "pretrained", "name": PRETRAINED_MODEL}
        ),
        "user_encoder": encoders.pop("user_encoder", {"kind": "weighted_mean"}),
        **encoders,
        "data_window": dict(data_window),
        "n_events": n_events,
        "n_items": n_items,
        "metrics": dict(metrics),
        "config": dict(config),
    }


def pretrained_item_encoder(max_length: int) -> dict[str, Any]:
    """The ``item_encoder`` entry of a version embedded by the pretrained model with
    `max_length` tokens per item text."""
    return {"kind": "pretrained", "name": PRETRAINED_MODEL, "max_length": max_length}


def data_window(topic: str, ranges: Mapping[int, tuple[int, int]]) -> dict[str, Any]:
    """``{"topic": ..., "partitions": {"0": [start, end], ...}}``, partitions in order."""
    return {
        "topic": topic,
        "partitions": {str(p): [start, end] for p, (start, end) in sorted(ranges.items())},
    }


def check_vectors(item_ids: Sequence[str], vectors: np.ndarray) -> np.ndarray:
    """`vectors` as contiguous float32 when they fit the reader's rules; else BadVectors."""
    if vectors.ndim != 2 or vectors.shape[0] != len(item_ids) or vectors.shape[1] < 1:
        raise BadVectors(f"{len(item_ids)} item ids but vectors of shape {tuple(vectors.shape)}")
    if not all(isinstance(i, str) and i for i in item_ids):
        raise BadVectors("an item id is empty or not a string")
    if len(set(item_ids)) != len(item_ids):
        raise BadVectors("item ids are not unique")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(vectors).all() or (len(vectors) and not np.abs(vectors).sum(axis=1).all()):
        raise BadVectors("the item vectors hold NaN, infinity or a zero row")
    return vectors


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
    item_texts: Sequence[str] | None = None,
) -> Path:
    """Write a new version (with its exact FAISS index) and return its directory.
    `item_texts`, aligned with `item_ids`: the texts the vectors were made from, kept as
    :data:`ITEM_TEXT_HASHES` (a reader keeps a vector while the item's text is unchanged).

    `write_encoders(directory)`, when given, writes the model's own files (encoders,
    checkpoint) into the not yet visible version directory and returns the manifest
    entries that describe them (for the pretrained encoder: no files, its entry alone).
    """
    import faiss  # only a writer needs FAISS; readers build their own index or none

    vectors = check_vectors(item_ids, vectors)
    store.mkdir(parents=True, exist_ok=True)
    staging = store / f".tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        _write_json(staging / ITEM_IDS, list(item_ids))
        with open(staging / ITEM_VECTORS, "wb") as handle:
            np.save(handle, vectors)
            _sync(handle)
        if item_texts is not None:
            if len(item_texts) != len(item_ids):
                raise ValueError(f"{len(item_texts)} item texts for {len(item_ids)} item ids")
            hashes = np.fromiter((text_hash(t) for t in item_texts), dtype=np.uint64,
                                 count=len(item_texts))
            with open(staging / ITEM_TEXT_HASHES, "wb") as handle:
                np.save(handle, hashes)
                _sync(handle)
        index = faiss.IndexFlatIP(vectors.shape[1])  # FAISS ids are the row numbers
        index.add(vectors)
        faiss.write_index(index, str(staging / INDEX))
        encoders = dict(write_encoders(staging)) if write_encoders is not None else None
        while True:
            version = new_version(now, _all_names(store))
            manifest = build_manifest(
                version=version, created_at=now, dim=int(vectors.shape[1]), data_window=window,
                n_events=n_events, n_items=len(item_ids), metrics=metrics, config=config,
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
