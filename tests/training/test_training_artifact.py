"""Artifact store: write/read round trip, version names, production pointer."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import faiss
import numpy as np
import pytest

from contracts.artifact import (
    ArtifactError,
    data_window,
    list_versions,
    new_version,
    promote,
    read_manifest,
    read_production,
    read_version,
    write_artifact,
)

NOW = datetime(2026, 11, 22, 23, 0, 0, tzinfo=UTC)


def _vectors(rows: int, dim: int = 8) -> np.ndarray:
    values = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def _write(store: Path, now: datetime = NOW, ids: list[str] | None = None) -> Path:
    ids = ids or ["a", "b", "c"]
    return write_artifact(
        store,
        now=now,
        item_ids=ids,
        vectors=_vectors(len(ids)),
        window=data_window("events.enriched", {1: (0, 4), 0: (2, 9)}),
        n_events=11,
        metrics={"k": 10},
        config={"max_events": 100},
    )


def test_round_trip(tmp_path: Path) -> None:
    path = _write(tmp_path)
    assert path == tmp_path / "20261122T230000Z"
    assert sorted(p.name for p in path.iterdir()) == [
        "index.faiss", "item_ids.json", "item_vectors.npy", "manifest.json"
    ]
    manifest = read_manifest(path, path.name)
    assert list(manifest) == [
        "format", "version", "created_at", "dim", "item_encoder", "user_encoder",
        "data_window", "n_events", "n_items", "metrics", "config",
    ]
    assert manifest["format"] == 1
    assert manifest["version"] == "20261122T230000Z"
    assert manifest["created_at"] == "2026-11-22T23:00:00+00:00"
    assert manifest["dim"] == 8
    assert manifest["item_encoder"] == {"kind": "pretrained", "name": "all-MiniLM-L6-v2"}
    assert manifest["user_encoder"] == {"kind": "weighted_mean"}
    assert manifest["data_window"] == {
        "topic": "events.enriched", "partitions": {"0": [2, 9], "1": [0, 4]}
    }
    assert (manifest["n_events"], manifest["n_items"]) == (11, 3)
    assert manifest["metrics"] == {"k": 10} and manifest["config"] == {"max_events": 100}
    stored = read_version(path, path.name)
    ids, vectors = stored.item_ids, stored.vectors
    assert ids == ["a", "b", "c"]
    assert vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, _vectors(3))
    index = faiss.read_index(str(path / "index.faiss"))
    assert index.ntotal == 3
    _, rows = index.search(vectors[[1]], 1)
    assert rows.tolist() == [[1]]


def test_versions_are_unique_and_sort_in_creation_order(tmp_path: Path) -> None:
    names = [_write(tmp_path).name for _ in range(3)]
    later = _write(tmp_path, NOW + timedelta(seconds=1)).name
    assert names == ["20261122T230000Z", "20261122T230000Z-001", "20261122T230000Z-002"]
    assert list_versions(tmp_path) == [*names, later]
    assert new_version(NOW, {"20261122T230000Z"}) == "20261122T230000Z-001"


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="2 item ids but vectors of shape"):
        write_artifact(
            tmp_path, now=NOW, item_ids=["a", "b"], vectors=_vectors(3), window={},
            n_events=0, metrics={}, config={},
        )
    with pytest.raises(ArtifactError, match="not unique"):
        _write(tmp_path, ids=["a", "a"])
    assert list(tmp_path.iterdir()) == []


def test_list_versions_ignores_incomplete_directories(tmp_path: Path) -> None:
    (tmp_path / ".tmp-123").mkdir()
    (tmp_path / "20200101T000000Z").mkdir()  # no manifest
    done = _write(tmp_path).name
    assert list_versions(tmp_path) == [done]
    assert list_versions(tmp_path / "missing") == []


def test_production_pointer(tmp_path: Path) -> None:
    assert read_production(tmp_path) is None
    first = _write(tmp_path).name
    second = _write(tmp_path).name
    pointer = promote(tmp_path, first, NOW)
    assert (pointer.version, pointer.previous) == (first, None)
    pointer = promote(tmp_path, second, NOW + timedelta(minutes=1))
    assert (pointer.version, pointer.previous) == (second, first)
    on_disk = json.loads((tmp_path / "production.json").read_text())
    assert on_disk == {
        "version": second, "previous": first, "updated_at": "2026-11-22T23:01:00+00:00"
    }
    assert read_production(tmp_path) == pointer
    assert promote(tmp_path, second, NOW).previous == first  # re-promoting keeps previous
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_promote_unknown_version_and_malformed_pointer(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no such version"):
        promote(tmp_path, "20990101T000000Z", NOW)
    (tmp_path / "production.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="malformed production pointer"):
        read_production(tmp_path)
