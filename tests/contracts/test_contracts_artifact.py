"""contracts.artifact: the one writer and reader of the artifact store, and each refusal."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from contracts import artifact
from contracts.artifact import (
    BadManifest,
    BadVectors,
    MissingFile,
    Production,
    UnsafeVersion,
    UnsupportedUri,
)
from contracts.itemtext import text_hash

NOW = datetime(2026, 11, 22, 23, 0, 0, tzinfo=UTC)


def _rows(n: int, dim: int = 4) -> np.ndarray:
    values = np.random.default_rng(3).standard_normal((n, dim)).astype(np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def _write(store: Path, ids: list[str] | None = None, vectors: np.ndarray | None = None) -> Path:
    ids = ids or ["a", "b", "c"]
    return artifact.write_artifact(
        store, now=NOW, item_ids=ids, vectors=_rows(len(ids)) if vectors is None else vectors,
        window=artifact.data_window("events.enriched", {0: (0, 5)}), n_events=5,
        metrics={}, config={},
    )


def test_round_trip(tmp_path: Path) -> None:
    written = _write(tmp_path, vectors=_rows(3).astype(np.float64))
    stored = artifact.read_version(written, written.name)
    assert (stored.version, stored.dim, stored.item_ids) == (written.name, 4, ["a", "b", "c"])
    assert stored.vectors.dtype == np.float32
    np.testing.assert_array_equal(stored.vectors, _rows(3))
    assert stored.manifest["n_items"] == 3
    assert artifact.list_versions(tmp_path) == [written.name]


def test_a_version_keeps_the_hash_of_each_items_text(tmp_path: Path) -> None:
    written = artifact.write_artifact(
        tmp_path, now=NOW, item_ids=["a", "b"], vectors=_rows(2),
        window=artifact.data_window("events.enriched", {0: (0, 5)}), n_events=5,
        metrics={}, config={}, item_texts=["Alpha. Films", "Beta"],
    )
    assert artifact.read_text_hashes(written, ["a", "b"]) == {
        "a": text_hash("Alpha. Films"), "b": text_hash("Beta")}
    assert text_hash("Alpha. Films") != text_hash("Alpha. Film")
    assert artifact.read_text_hashes(_write(tmp_path / "old"), ["a", "b", "c"]) == {}
    with pytest.raises(artifact.BadVectors, match="expected uint64"):
        artifact.read_text_hashes(written, ["a", "b", "c"])
    with pytest.raises(ValueError, match="2 item texts for 3 item ids"):
        artifact.write_artifact(
            tmp_path, now=NOW, item_ids=["a", "b", "c"], vectors=_rows(3),
            window=artifact.data_window("events.enriched", {0: (0, 5)}), n_events=5,
            metrics={}, config={}, item_texts=["Alpha", "Beta"],
        )


def test_write_encoders_hook_adds_files_and_encoder_entries(tmp_path: Path) -> None:
    def extra(directory: Path) -> dict[str, object]:
        (directory / artifact.USER_ENCODER).write_bytes(b"program")
        return {"user_encoder": {"kind": "transformer", "file": artifact.USER_ENCODER,
                                 "max_len": 8}}

    written = artifact.write_artifact(
        tmp_path, now=NOW, item_ids=["a"], vectors=_rows(1), window={}, n_events=0,
        metrics={}, config={}, write_encoders=extra)
    assert (written / artifact.USER_ENCODER).read_bytes() == b"program"
    assert artifact.read_manifest(written, written.name)["user_encoder"]["kind"] == "transformer"


@pytest.mark.parametrize(
    "version", ["../elsewhere", "a/b", "/abs", "..", "v..1", ".hidden", "", "a b", "x" * 200, 7])
def test_path_like_or_odd_version_names_are_refused(tmp_path: Path, version: object) -> None:
    with pytest.raises(UnsafeVersion):
        artifact.check_version(version)
    with pytest.raises(UnsafeVersion):
        artifact.read_version(tmp_path, version)  # type: ignore[arg-type]


def test_accepted_version_names() -> None:
    for version in ("base", "20261122T230000Z", "20261122T230000Z-001", "v1.2_rc"):
        assert artifact.check_version(version) == version


@pytest.mark.parametrize(
    ("rows", "error", "message"),
    [
        (np.array([[1, 0, 0, 0], [np.nan, 0, 0, 0], [0, 1, 0, 0]], np.float32), BadVectors, "NaN"),
        (np.array([[1, 0, 0, 0], [np.inf, 0, 0, 0], [0, 1, 0, 0]], np.float32), BadVectors,
         "infinity"),
        (np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]], np.float32), BadVectors, "zero row"),
        (_rows(2), BadVectors, r"has shape \(2, 4\), expected \(3, 4\)"),
        (_rows(3, dim=5), BadVectors, r"expected \(3, 4\)"),
        (_rows(3).astype(np.float64), BadVectors, "expected float32"),
    ],
)
def test_bad_vectors_are_refused(tmp_path: Path, rows: np.ndarray, error: type, message: str
                                 ) -> None:
    written = _write(tmp_path)
    np.save(written / artifact.ITEM_VECTORS, rows)
    with pytest.raises(error, match=message):
        artifact.read_version(written, written.name)


@pytest.mark.parametrize("name", [artifact.MANIFEST, artifact.ITEM_IDS, artifact.ITEM_VECTORS])
def test_a_missing_file_is_refused(tmp_path: Path, name: str) -> None:
    written = _write(tmp_path)
    (written / name).unlink()
    with pytest.raises(MissingFile, match="no such file"):
        artifact.read_version(written, written.name)


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("{not json", "cannot read"),
        ("[]", "not a JSON object"),
        (json.dumps({"version": "other", "dim": 4}), "is version 'other'"),
        (json.dumps({"version": "V", "dim": 0}), "no valid dim"),
        (json.dumps({"version": "V", "dim": "4"}), "no valid dim"),
        (json.dumps({"version": "V", "dim": True}), "no valid dim"),
    ],
)
def test_a_bad_manifest_is_refused(tmp_path: Path, manifest: str, message: str) -> None:
    written = _write(tmp_path)
    (written / artifact.MANIFEST).write_text(manifest.replace('"V"', json.dumps(written.name)))
    with pytest.raises(BadManifest, match=message):
        artifact.read_version(written, written.name)


@pytest.mark.parametrize(("ids", "message"), [('["a", "", "c"]', "not a list of item ids"),
                                              ('["a", "a", "c"]', "not unique"),
                                              ('{"a": 1}', "not a list of item ids")])
def test_bad_item_ids_are_refused(tmp_path: Path, ids: str, message: str) -> None:
    written = _write(tmp_path)
    (written / artifact.ITEM_IDS).write_text(ids)
    with pytest.raises(BadVectors, match=message):
        artifact.read_version(written, written.name)


def test_the_writer_refuses_what_the_reader_would(tmp_path: Path) -> None:
    bad = _rows(2)
    bad[1, 0] = np.nan
    for ids, vectors, message in ((["a", "b"], bad, "NaN"), (["a", "a"], _rows(2), "unique"),
                                  (["a", ""], _rows(2), "empty"),
                                  (["a"], _rows(2), "1 item ids but vectors of shape")):
        with pytest.raises(BadVectors, match=message):
            _write(tmp_path, ids, vectors)
    assert list(tmp_path.iterdir()) == []


def test_production_pointer_round_trip_and_refusals(tmp_path: Path) -> None:
    assert artifact.read_production(tmp_path) is None
    assert artifact.production_version(tmp_path) is None
    first = _write(tmp_path).name
    pointer = artifact.promote(tmp_path, first, NOW)
    assert artifact.read_production(tmp_path) == pointer == Production(first, None, NOW.isoformat())
    assert artifact.production_version(tmp_path) == first
    with pytest.raises(UnsafeVersion):
        artifact.promote(tmp_path, "../" + first, NOW)
    with pytest.raises(MissingFile, match="no such version"):
        artifact.promote(tmp_path, "20990101T000000Z", NOW)
    (tmp_path / artifact.PRODUCTION).write_text('{"version": "../x", "previous": null, '
                                                '"updated_at": "t"}')
    with pytest.raises(UnsafeVersion, match="malformed production pointer"):
        artifact.read_production(tmp_path)
    with pytest.raises(UnsafeVersion, match="names no valid version"):
        artifact.production_version(tmp_path)
    (tmp_path / artifact.PRODUCTION).write_text("{not json")
    with pytest.raises(BadManifest):
        artifact.read_production(tmp_path)


def test_write_production_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    artifact.write_production(tmp_path, Production("v2", "v1", "t"))
    assert json.loads((tmp_path / artifact.PRODUCTION).read_text()) == {
        "version": "v2", "previous": "v1", "updated_at": "t"}
    assert [p.name for p in tmp_path.iterdir()] == [artifact.PRODUCTION]
    with pytest.raises(UnsafeVersion):
        artifact.write_production(tmp_path, Production("a/b", None, "t"))
    assert artifact.production_version(tmp_path) == "v2"


def test_artifact_uri() -> None:
    assert artifact.artifact_path("file:///a/b") == Path("/a/b") == artifact.artifact_path("/a/b")
    with pytest.raises(UnsupportedUri, match="unsupported"):
        artifact.artifact_path("s3://bucket/v1")


def test_errors_as_translates_to_a_deployables_type() -> None:
    class Own(Exception):
        pass

    with pytest.raises(Own, match="not a valid version") as caught:
        with artifact.errors_as(Own):
            artifact.check_version("../x")
    assert isinstance(caught.value.__cause__, UnsafeVersion)


def test_a_version_names_the_token_limit_its_items_were_embedded_with(tmp_path: Path) -> None:
    path = artifact.write_artifact(
        tmp_path, now=NOW, item_ids=["a"], vectors=_rows(1),
        window=artifact.data_window("events.enriched", {0: (0, 1)}), n_events=1, metrics={},
        config={}, write_encoders=lambda _: {"item_encoder": artifact.pretrained_item_encoder(96)},
    )
    manifest = artifact.read_manifest(path, path.name)
    assert manifest["item_encoder"] == {"kind": "pretrained", "name": "all-MiniLM-L6-v2",
                                        "max_length": 96}
    assert artifact.text_max_length(manifest) == 96
    assert sorted(p.name for p in path.iterdir()) == [
        "index.faiss", "item_ids.json", "item_vectors.npy", "manifest.json"
    ]


def test_without_a_named_limit_the_default_one(tmp_path: Path) -> None:
    manifest = artifact.read_manifest(_write(tmp_path), "20261122T230000Z")
    assert "max_length" not in manifest["item_encoder"]
    assert artifact.text_max_length(manifest) == 256  # what such versions were embedded at
    assert artifact.text_max_length({"version": "base"}) == 256


@pytest.mark.parametrize("limit", [0, -3, "64", 6.5, True])
def test_a_limit_that_is_no_positive_integer_is_refused(limit: object) -> None:
    with pytest.raises(BadManifest, match="max_length"):
        artifact.text_max_length({"version": "v", "item_encoder": {"max_length": limit}})
