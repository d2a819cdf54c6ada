"""streams.catalog: items, and vectors of the model version in use only."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.itemtext import item_text, text_hash
from protos import events_pb2
from streams.catalog import Catalog


def vector(item_id: str, version: str, values: list[float]) -> events_pb2.ItemVector:
    return events_pb2.ItemVector(item_id=item_id, model_version=version, vector=values)


def test_items_are_added_replaced_and_removed() -> None:
    catalog = Catalog(model_version="base", dim=2)
    catalog.put_item(events_pb2.Item(item_id="a", title="old"))
    catalog.put_item(events_pb2.Item(item_id="a", title="new"))
    assert len(catalog) == 1
    item = catalog.item("a")
    assert item is not None and item.title == "new"
    assert catalog.put_vector(vector("a", "base", [1.0, 0.0]))
    catalog.remove_item("a")
    assert catalog.item("a") is None and catalog.vector("a") is None


def test_only_vectors_of_the_version_in_use_are_kept() -> None:
    catalog = Catalog(model_version="v2", dim=2)
    assert not catalog.put_vector(vector("a", "base", [1.0, 0.0]))
    assert catalog.vector("a") is None
    assert catalog.put_vector(vector("a", "v2", [3.0, 4.0]))
    stored = catalog.vector("a")
    assert stored is not None and stored.dtype == np.float32
    np.testing.assert_allclose(stored, [0.6, 0.8])  # normalised on the way in
    assert catalog.vector_count() == 1


def test_vectors_of_another_dimension_are_ignored() -> None:
    catalog = Catalog(model_version="base", dim=3)
    assert not catalog.put_vector(vector("a", "base", [1.0, 0.0]))
    assert catalog.vector("a") is None


@pytest.mark.parametrize("version", ["base", "20261122T230000Z"])
def test_model_version_is_kept(version: str) -> None:
    assert Catalog(model_version=version, dim=1).model_version == version


def test_switch_replaces_every_vector_with_the_new_versions() -> None:
    catalog = Catalog(model_version="base", dim=2)
    for item_id in ("a", "b"):
        catalog.put_item(events_pb2.Item(item_id=item_id))
    catalog.put_vector(vector("a", "base", [1.0, 0.0]))
    catalog.put_vector(vector("b", "base", [0.0, 1.0]))
    before = catalog.vectors()
    catalog.switch("v2", 3, {"a": np.array([0.0, 3.0, 4.0]), "bad": np.zeros(2)})
    assert (catalog.model_version, catalog.dim) == ("v2", 3)
    np.testing.assert_allclose(catalog.vector("a"), [0.0, 0.6, 0.8])
    assert catalog.vector("bad") is None
    assert [item.item_id for item in catalog.items_without_vector()] == ["b"]
    assert set(before) == {"a", "b"} and len(before["a"]) == 2  # a holder keeps one version
    assert catalog.put_vector(vector("b", "v2", [1.0, 0.0, 0.0]))
    assert not catalog.put_vector(vector("b", "base", [1.0, 0.0]))


def test_a_vector_is_reused_while_the_item_text_it_was_made_from_stays() -> None:
    catalog = Catalog(model_version="base", dim=2)
    shoe = events_pb2.Item(item_id="a", title="Shoe", categories=["feet"], price=10.0,
                           updated_at_ms=1_000)
    assert not catalog.reuse_vector(shoe)  # no vector yet
    catalog.put_vector(vector("a", "base", [1.0, 0.0]), text="Shoe. feet")
    cheaper = events_pb2.Item(item_id="a", title="Shoe", categories=["feet"], price=8.0,
                              updated_at_ms=9_000)
    assert catalog.reuse_vector(cheaper)  # price only: the text is the vector's
    renamed = events_pb2.Item(item_id="a", title="Boot", categories=["feet"], updated_at_ms=9_500)
    assert not catalog.reuse_vector(renamed)
    # the worker's own vector read back from item-vectors keeps the text it was made from
    catalog.put_vector(vector("a", "base", [1.0, 0.0]))
    assert catalog.reuse_vector(cheaper)
    # another vector (another worker's, of an unknown text) forgets it
    catalog.put_vector(events_pb2.ItemVector(item_id="a", model_version="base",
                                             vector=[0.0, 1.0], updated_at_ms=5_000))
    assert not catalog.reuse_vector(cheaper)  # changed at 9,000, after the vector was made
    assert catalog.reuse_vector(shoe)  # changed at 1,000, before: the vector is of it
    assert catalog.reuse_vector(cheaper)  # and now its text is known


def test_a_trained_versions_vectors_are_reused_for_items_unchanged_since_training() -> None:
    catalog = Catalog(model_version="base", dim=2)
    catalog.switch("v2", 2, {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])},
                   made_at_ms=5_000)
    assert catalog.reuse_vector(events_pb2.Item(item_id="a", title="A", updated_at_ms=4_000))
    assert not catalog.reuse_vector(events_pb2.Item(item_id="b", title="B", updated_at_ms=6_000))
    # no change time: nothing tells the vector is of this text
    assert not catalog.reuse_vector(events_pb2.Item(item_id="b", title="B"))
    catalog.remove_item("a")
    assert not catalog.reuse_vector(events_pb2.Item(item_id="a", title="A", updated_at_ms=4_000))


def test_a_versions_vector_is_kept_while_the_text_it_recorded_stays_whenever_it_changed(
) -> None:
    a = events_pb2.Item(item_id="a", title="A", updated_at_ms=9_000)  # changed after training
    b = events_pb2.Item(item_id="b", title="B", updated_at_ms=1_000)
    catalog = Catalog(model_version="base", dim=2)
    catalog.switch("v2", 2, {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])},
                   made_at_ms=5_000, text_hashes={"a": text_hash(item_text(a)),
                                                  "b": text_hash("B, as it was")})
    assert catalog.reuse_vector(a)  # a price change after training: the same text
    assert not catalog.reuse_vector(b)  # another text, however old the record
    # a vector of another text replaces the version's: its recorded hash goes with it
    catalog.put_vector(vector("b", "v2", [0.6, 0.8]))
    catalog.switch("v3", 2, {"a": np.array([1.0, 0.0])}, made_at_ms=5_000,
                   text_hashes={"a": text_hash(item_text(a)), "gone": 1})
    assert catalog.reuse_vector(a) and not catalog.reuse_vector(b)
