"""Loading the production model version from an artifact store directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from serving_harness import unit_rows, write_artifact

from contracts.artifact import StoredVersion
from serving.artifact import load_version, production_version
from serving.errors import ArtifactError
from serving.routing import VersionLoader


def _load_production(artifact_dir: Path) -> StoredVersion:
    """What start-up reads: the version ``production.json`` names, then its directory."""
    version = production_version(artifact_dir)
    return load_version(artifact_dir / version, version)


async def test_without_production_json_the_bootstrap_model_is_used(tmp_path: Path) -> None:
    artifact_dir = tmp_path / "missing"
    version = production_version(artifact_dir)
    load = VersionLoader(artifact_dir=artifact_dir, dim=384, ivf_threshold=50_000, nprobe=8,
                         cache_dir=None)
    model = await load(version, "")
    assert (model.version, model.index.dim, len(model.index)) == ("base", 384, 0)


def test_the_production_version_is_loaded(tmp_path: Path) -> None:
    vectors = unit_rows(np.random.default_rng(1), 4, 8)
    write_artifact(tmp_path, "20261122T230000Z", ["a", "b", "c", "d"], vectors)
    state = _load_production(tmp_path)
    assert (state.version, state.dim, state.item_ids) == ("20261122T230000Z", 8, ["a", "b", "c", "d"])
    np.testing.assert_array_equal(state.vectors, vectors)
    assert state.vectors.dtype == np.float32


def _break(version_dir: Path, name: str, content: str | np.ndarray) -> None:
    if isinstance(content, np.ndarray):
        np.save(version_dir / name, content)
    else:
        (version_dir / name).write_text(content)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("item_ids.json", json.dumps(["a", "b"]), r"has shape \(3, 8\), expected \(2, 8\)"),
        ("item_ids.json", json.dumps(["a", "", "c"]), "not a list of item ids"),
        ("item_ids.json", "{not json", "cannot read"),
        ("item_vectors.npy", np.zeros((3, 8), np.float32), "zero row"),
        ("item_vectors.npy", np.full((3, 8), np.nan, np.float32), "NaN"),
        ("manifest.json", json.dumps({"version": "other", "dim": 8}), "is version 'other'"),
        ("manifest.json", json.dumps({"version": "v1", "dim": 0}), "no valid dim"),
    ],
)
def test_a_broken_artifact_stops_start_up(
    tmp_path: Path, name: str, content: str | np.ndarray, message: str
) -> None:
    version_dir = write_artifact(tmp_path, "v1", ["a", "b", "c"], unit_rows(np.random.default_rng(2), 3, 8))
    _break(version_dir, name, content)
    with pytest.raises(ArtifactError, match=message):
        _load_production(tmp_path)


@pytest.mark.parametrize("pointer", ['{"version": "../elsewhere"}', '{"version": ""}', "[]x"])
def test_a_bad_production_pointer_stops_start_up(tmp_path: Path, pointer: str) -> None:
    (tmp_path / "production.json").write_text(pointer)
    with pytest.raises(ArtifactError):
        _load_production(tmp_path)


@pytest.mark.parametrize("version", ["../v1", "v1/..", ".."])
def test_a_path_like_version_is_refused(tmp_path: Path, version: str) -> None:
    write_artifact(tmp_path, "v1", ["a", "b", "c"], unit_rows(np.random.default_rng(2), 3, 8))
    with pytest.raises(ArtifactError, match="not a valid version"):
        load_version(tmp_path / "v1", version)


def test_vectors_of_another_dtype_are_refused(tmp_path: Path) -> None:
    version_dir = write_artifact(tmp_path, "v1", ["a", "b"], unit_rows(np.random.default_rng(2), 2, 8))
    np.save(version_dir / "item_vectors.npy", unit_rows(np.random.default_rng(2), 2, 8).astype(np.float16))
    with pytest.raises(ArtifactError, match="expected float32"):
        load_version(version_dir, "v1")
