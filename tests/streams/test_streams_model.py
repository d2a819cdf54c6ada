"""streams.model: which version and encoder a worker starts with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.errors import ArtifactError
from streams.model import BASE_VERSION, choose_model

PRETRAINED = Path("/models/minilm")


def store(tmp_path: Path, version: str, item_encoder: dict[str, str]) -> Path:
    (tmp_path / version).mkdir(parents=True)
    (tmp_path / version / "manifest.json").write_text(
        json.dumps({"format": 1, "version": version, "item_encoder": item_encoder})
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
