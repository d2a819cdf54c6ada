"""Applying item-vectors and items records to the index and the catalog."""

from __future__ import annotations

import numpy as np
from aiokafka import ConsumerRecord

from protos import events_pb2
from serving.catalog import Catalog
from serving.feeds import CatalogUpdates, VectorUpdates
from serving.index import ItemIndex
from serving.models import Model, Models

_offsets = iter(range(1_000_000))


def _stored(index: ItemIndex, item_id: str) -> np.ndarray:
    vector = index.vector(item_id)
    assert vector is not None, f"{item_id} is not indexed"
    return vector


def _record(key: str, value: bytes | None, topic: str = "item-vectors") -> ConsumerRecord:
    return ConsumerRecord(
        topic=topic, partition=0, offset=next(_offsets), timestamp=0, timestamp_type=0,
        key=key.encode(), value=value, checksum=None, serialized_key_size=len(key),
        serialized_value_size=len(value or b""), headers=[],
    )


def _vector(item_id: str, values: list[float], version: str = "v1") -> ConsumerRecord:
    message = events_pb2.ItemVector(item_id=item_id, model_version=version, vector=values)
    return _record(item_id, message.SerializeToString())


def test_vectors_of_the_serving_version_are_upserted_and_others_ignored() -> None:
    index = ItemIndex(3)
    updates = VectorUpdates(Models(Model("v1", index)))
    updates([
        _vector("a", [1, 0, 0]),
        _vector("b", [0, 1, 0], version="v2"),  # another model's space
        _vector("c", [0, 0, 1, 0]),  # wrong dimension
        _vector("d", [0, 0, 0]),  # zero vector
        _record("e", b"\xff\xff not protobuf"),
        _vector("f", [0, 3, 4]),
    ])
    assert {item_id for item_id in "abcdef" if item_id in index} == {"a", "f"}
    assert updates.ignored == 4
    np.testing.assert_allclose(_stored(index, "f"), [0, 0.6, 0.8], atol=1e-6)


def test_the_last_record_per_item_wins_and_tombstones_remove() -> None:
    index = ItemIndex(2)
    updates = VectorUpdates(Models(Model("v1", index)))
    updates([_vector("a", [1, 0]), _vector("b", [0, 1]), _vector("a", [0, 1])])
    np.testing.assert_allclose(_stored(index, "a"), [0, 1])
    updates([_record("b", None), _vector("c", [1, 1]), _record("c", None), _record("zz", None)])
    assert len(index) == 1 and "a" in index
    updates([_record("a", None), _vector("a", [1, 0])])  # re-added after its tombstone
    np.testing.assert_allclose(_stored(index, "a"), [1, 0])
    updates([_vector("a", [0, 1]), _record("a", None)])  # removed after its vector
    assert "a" not in index


def test_vectors_go_to_the_index_of_their_own_version() -> None:
    models = Models(Model("v1", ItemIndex(2)))
    models.add(Model("v2", ItemIndex(2)))
    VectorUpdates(models)([_vector("a", [1, 0]), _vector("a", [0, 1], version="v2"),
                           _vector("b", [1, 1], version="v3")])
    v1, v2 = models.get("v1"), models.get("v2")
    assert v1 is not None and v2 is not None
    np.testing.assert_allclose(_stored(v1.index, "a"), [1, 0])
    np.testing.assert_allclose(_stored(v2.index, "a"), [0, 1])
    assert "b" not in v1.index and "b" not in v2.index


def test_items_fill_the_catalog_and_tombstones_remove() -> None:
    catalog = Catalog()
    updates = CatalogUpdates(catalog)
    item = events_pb2.Item(item_id="m1", title="Heat (1995)", categories=["Action", "Crime"])
    updates([
        _record("m1", item.SerializeToString(), topic="items"),
        _record("m2", events_pb2.Item(item_id="m2", title="Two").SerializeToString(), topic="items"),
        _record("m3", b"\xff garbage", topic="items"),
        _record("m2", None, topic="items"),
    ])
    entry = catalog.get("m1")
    assert entry is not None and entry.title == "Heat (1995)"
    assert entry.categories == ("Action", "Crime")
    assert catalog.get("m2") is None and catalog.get("m3") is None


def test_items_in_the_json_mapping_fill_the_catalog_too() -> None:
    catalog = Catalog()
    CatalogUpdates(catalog)([
        _record("m4", b'{"itemId": "m4", "title": "Four", "categories": ["Drama"]}',
                topic="items"),
        _record("m5", b'{"item_id": "m5", "colour": "red"}', topic="items"),  # unknown field
    ])
    entry = catalog.get("m4")
    assert entry is not None and (entry.title, entry.categories) == ("Four", ("Drama",))
    assert catalog.get("m5") is None
