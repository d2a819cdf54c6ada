"""streams.model: which version and encoder a worker starts with."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from aiokafka import ConsumerRecord

from protos import events_pb2
from streams.errors import ArtifactError
from streams.live import LiveModel, LoadedModel
from streams.model import (
    BASE_VERSION,
    ModelChoice,
    artifact_path,
    choose_model,
    item_vectors,
    read_version,
)
from streams.releases import ModelReleases

PRETRAINED = Path("/models/minilm")


def store(tmp_path: Path, version: str, item_encoder: dict[str, str]) -> Path:
    (tmp_path / version).mkdir(parents=True)
    (tmp_path / version / "manifest.json").write_text(
        json.dumps({"format": 1, "version": version, "dim": 8, "item_encoder": item_encoder})
    )
    (tmp_path / "production.json").write_text(
        json.dumps({"version": version, "previous": None, "updated_at": "2026-11-22T23:00:00Z"})
    )
    return tmp_path


def test_no_store_means_base(tmp_path: Path) -> None:
    choice = choose_model(tmp_path / "absent", PRETRAINED)
    assert (choice.version, choice.encoder_dir) == (BASE_VERSION, PRETRAINED)
    assert choose_model(tmp_path, PRETRAINED).version == "base"


def test_production_version_with_pretrained_encoder(tmp_path: Path) -> None:
    root = store(tmp_path, "20261122T230000Z", {"kind": "pretrained", "name": "all-MiniLM-L6-v2"})
    choice = choose_model(root, PRETRAINED)
    assert (choice.version, choice.encoder_dir) == ("20261122T230000Z", PRETRAINED)


def test_fine_tuned_encoder_comes_from_the_version(tmp_path: Path) -> None:
    root = store(tmp_path, "v2", {"kind": "finetuned"})
    with pytest.raises(ArtifactError, match="no model"):
        choose_model(root, PRETRAINED)
    (root / "v2" / "item_encoder").mkdir()
    (root / "v2" / "item_encoder" / "config.json").write_text("{}")
    assert choose_model(root, PRETRAINED).encoder_dir == root / "v2" / "item_encoder"


@pytest.mark.parametrize("pointer", ["not json", "[]", '{"previous": null}', '{"version": ""}'])
def test_broken_pointer_is_an_error(tmp_path: Path, pointer: str) -> None:
    (tmp_path / "production.json").write_text(pointer)
    with pytest.raises(ArtifactError):
        choose_model(tmp_path, PRETRAINED)


def test_pointer_to_missing_version_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "production.json").write_text('{"version": "gone"}')
    with pytest.raises(ArtifactError, match="manifest"):
        choose_model(tmp_path, PRETRAINED)


def test_trained_version_files(tmp_path: Path) -> None:
    root = store(tmp_path, "v3", {"kind": "finetuned", "dir": "item_encoder",
                                  "head": "item_head.npz", "max_length": 64})
    (root / "v3" / "item_encoder").mkdir()
    (root / "v3" / "item_encoder" / "config.json").write_text("{}")
    (root / "v3" / "item_head.npz").write_bytes(b"")
    manifest = json.loads((root / "v3" / "manifest.json").read_text())
    manifest["user_encoder"] = {"kind": "transformer", "file": "user_encoder.pt2", "max_len": 8}
    (root / "v3" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="without file"):
        choose_model(root, PRETRAINED)
    (root / "v3" / "user_encoder.pt2").write_bytes(b"")
    choice = read_version(root / "v3", "v3", PRETRAINED)
    assert (choice.head, choice.text_max_length) == (root / "v3" / "item_head.npz", 64)
    assert (choice.user_encoder, choice.max_len) == (root / "v3" / "user_encoder.pt2", 8)
    assert choice.made_at_ms == 0  # no created_at: when its vectors were made is unknown
    manifest["created_at"] = "2026-11-22T23:00:00+00:00"
    (root / "v3" / "manifest.json").write_text(json.dumps(manifest))
    assert read_version(root / "v3", "v3", PRETRAINED).made_at_ms == 1_795_388_400_000
    with pytest.raises(ArtifactError, match="manifest is version"):
        read_version(root / "v3", "v4", PRETRAINED)


def test_item_vectors_by_id(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"format": 1, "version": "v", "dim": 2}')
    (tmp_path / "item_ids.json").write_text('["x", "y"]')
    np.save(tmp_path / "item_vectors.npy", np.eye(2, dtype=np.float32))
    vectors = item_vectors(ModelChoice("v", PRETRAINED, tmp_path))
    np.testing.assert_array_equal(vectors["y"], [0.0, 1.0])
    assert item_vectors(ModelChoice(BASE_VERSION, PRETRAINED)) == {}
    (tmp_path / "item_ids.json").write_text('["x"]')
    with pytest.raises(ArtifactError, match="do not match"):
        item_vectors(ModelChoice("v", PRETRAINED, tmp_path))


def test_artifact_uri() -> None:
    assert artifact_path("file:///a/b") == Path("/a/b") == artifact_path("/a/b")
    with pytest.raises(ArtifactError, match="unsupported"):
        artifact_path("s3://bucket/v1")


def _release(version: str, uri: Path) -> ConsumerRecord:
    value = events_pb2.ModelRelease(action="promote", version=version, uri=str(uri))
    return ConsumerRecord("models", 0, 7, 0, 0, None, value.SerializeToString(), None, 0, 0, [])


@pytest.mark.parametrize("broken", ["path_like_version", "nan_vector"])
async def test_a_broken_release_is_refused_and_the_worker_keeps_its_version(
    tmp_path: Path, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As serving does: a path-like version or a non-finite item vector is refused, with
    one log line, and the version in use stays."""
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "manifest.json").write_text(
        '{"format": 1, "version": "v2", "dim": 2, "item_encoder": {"kind": "pretrained"}}')
    (tmp_path / "v2" / "item_ids.json").write_text('["x", "y"]')
    rows = np.eye(2, dtype=np.float32)
    if broken == "nan_vector":
        rows[1, 1] = np.nan
    np.save(tmp_path / "v2" / "item_vectors.npy", rows)
    version = "../v2" if broken == "path_like_version" else "v2"
    loaded: list[str] = []

    def load(choice: ModelChoice) -> LoadedModel:
        vectors = item_vectors(choice)
        loaded.append(choice.version)
        return LoadedModel(choice.version, None, None, vectors)  # type: ignore[arg-type]

    live = LiveModel(LoadedModel("v1", None, None, {}))  # type: ignore[arg-type]
    releases = ModelReleases(live, bootstrap_servers=["127.0.0.1:9092"], topic="models",
                             pretrained_dir=PRETRAINED, load=load)
    with caplog.at_level(logging.ERROR, logger="streams.releases"):
        await releases._apply(_release(version, tmp_path / "v2"))
    assert live.pending.empty() and loaded == [] and live.version == "v1"
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"model release {version} not applied: ")
    assert ("not a valid version" if broken == "path_like_version" else "NaN") in line
    if broken == "path_like_version":  # the same files under their own name are applied
        await releases._apply(_release("v2", tmp_path / "v2"))
        assert loaded == ["v2"] and live.pending.get_nowait().version == "v2"
