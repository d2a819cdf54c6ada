"""A trained version announced on ``models`` while the worker runs: it switches without a
restart, re-embeds its users, and writes user vectors of that version computed by the
exported user tower; new items get vectors from the version's item encoder.

The artifact is a tiny model trained here with the training package on the test's own
catalog (a few seconds on a CPU).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from kafka.consumer.fetcher import ConsumerRecord
from streams_harness import Running
from test_streams_worker import catalog, enriched_for, event, new_id, now_ms, publish_items
from transformers import AutoModel, AutoTokenizer

from contracts.artifact import write_artifact
from contracts.encoder import pretrained_model_dir
from contracts.itemtext import item_text
from contracts.online import decode_vector
from protos import events_pb2
from training.announce import announce_release, release_message
from training.data import Dataset
from training.export import export_model, item_vectors
from training.model import ModelConfig
from training.offline import TEXT_MAX_LENGTH, Recipe, build_model, split_dataset
from training.sequences import Interactions
from training.train import TrainConfig, train

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_LEN = 8
TOWER_ATOL = 5e-3  # per component of a unit vector: bf16 autocast against fp32


def tiny_recipe(n_items: int) -> Recipe:
    """A text-aware model small enough to train in seconds on a CPU."""
    return Recipe(
        model=ModelConfig(n_items=n_items, dim=16, max_len=MAX_LEN, n_blocks=1, n_heads=2,
                          dropout=0.1, temperature=0.1),
        train=TrainConfig(epochs=2, time_budget_s=120, batch_size=16, lr=5e-3, warmup_steps=2,
                          bf16=False, text_items_per_step=4),
        text_layers=1,
    )


def tiny_version(store: Path, items: list[events_pb2.Item]) -> Path:
    """Train and export a small text-aware model over `items`; returns its directory."""
    users, item_ids, times = [], [], []
    for u in range(24):
        for t in range(6):
            users.append(f"train-u{u}")
            item_ids.append(items[(u + t) % len(items)].item_id)
            times.append(1_000_000 + 60_000 * t)
    dataset = Dataset(
        name="tiny",
        events=Interactions(
            user_ids=np.array(users, dtype=object), item_ids=np.array(item_ids, dtype=object),
            timestamps_ms=np.array(times, dtype=np.int64),
            event_types=np.full(len(users), events_pb2.CLICK, dtype=np.int64),
        ),
        item_ids=[item.item_id for item in items],
        item_texts=[item_text(item) for item in items],
    )
    recipe = tiny_recipe(len(items))
    model = build_model(recipe, dataset, pretrained_model_dir(), progress=False)
    train(model, split_dataset(dataset).train, recipe.train, device=torch.device("cpu"),
          progress=False)
    return write_artifact(
        store, now=datetime.now(UTC), item_ids=dataset.item_ids, vectors=item_vectors(model),
        window={"topic": "tiny", "partitions": {}}, n_events=len(users), metrics={}, config={},
        write_encoders=lambda d: export_model(model, recipe.train, d,
                                              text_max_length=TEXT_MAX_LENGTH),
    )


def stored_vector(running: Running, user: str) -> tuple[str, np.ndarray] | None:
    stored = running.redis.hgetall(running.worker.keys.user_vector(user))
    if not stored:
        return None
    return stored[b"version"].decode(), decode_vector(stored[b"vec"])  # type: ignore[index]


def wait_for_version(running: Running, user: str, version: str,
                     timeout_s: float = 60.0) -> np.ndarray:
    deadline = time.monotonic() + timeout_s
    while True:
        found = stored_vector(running, user)
        if found is not None and found[0] == version:
            return found[1]
        running.worker.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"no vector of {version} for {user}, have {found}:\n"
                                 f"{running.worker.log_tail()}")
        time.sleep(0.1)


def tower_output(version_dir: Path, history: list[tuple[str, int, int]]) -> np.ndarray:
    """The exported tower on one history of (item id, event type, time ms), oldest first,
    with the version's own item vectors, left-padded as contracts §4 says."""
    ids = json.loads((version_dir / "item_ids.json").read_text())
    table = np.load(version_dir / "item_vectors.npy")
    rows = {item_id: row for row, item_id in enumerate(ids)}
    history = history[-MAX_LEN:]
    start, newest = MAX_LEN - len(history), max(ts for _, _, ts in history)
    vectors = np.zeros((1, MAX_LEN, table.shape[1]), np.float32)
    types = np.zeros((1, MAX_LEN), np.int64)
    gaps = np.zeros((1, MAX_LEN), np.float32)
    mask = np.zeros((1, MAX_LEN), bool)
    for k, (item_id, kind, ts) in enumerate(history):
        vectors[0, start + k] = table[rows[item_id]]
        types[0, start + k] = kind
        gaps[0, start + k] = (newest - ts) / 1000.0
        mask[0, start + k] = True
    tower = torch.export.load(str(version_dir / "user_encoder.pt2")).module()
    with torch.no_grad():
        output = tower(*(torch.from_numpy(a) for a in (vectors, types, gaps, mask)))
    return output.numpy()[0]


def text_vector(version_dir: Path, item: events_pb2.Item) -> np.ndarray:
    """A new item's vector by the recipe of contracts §4 (fine-tuned encoder + head)."""
    manifest = json.loads((version_dir / "manifest.json").read_text())["item_encoder"]
    tokenizer = AutoTokenizer.from_pretrained(version_dir / manifest["dir"])
    encoder = AutoModel.from_pretrained(version_dir / manifest["dir"]).eval()
    head = np.load(version_dir / manifest["head"])
    tokens = tokenizer([item_text(item)], truncation=True, max_length=manifest["max_length"],
                       return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**tokens).last_hidden_state.numpy()[0]
    vector = hidden.mean(axis=0) @ head["weight"].T + head["bias"]
    return vector / np.linalg.norm(vector)


def test_a_released_version_is_used_without_restart(running: Running, tmp_path: Path) -> None:
    items = catalog(6)
    publish_items(running, items)
    early = new_id("user")  # has history before the release: re-embedded by the switch
    start = now_ms() - 600_000
    first = event(early, items[0].item_id, events_pb2.VIEW, ts=start)
    running.send("events", early, first.SerializeToString())
    enriched_for(running, early, 1)
    assert wait_for_version(running, early, "base").shape == (384,)

    version_dir = tiny_version(tmp_path / "store", items)
    version = version_dir.name
    release = release_message(version=version, uri=str(version_dir), created_at_ms=now_ms(),
                              previous_version="base")
    announce_release(running.producer, running.worker.topics["models"], release)

    # The worker may run the tower in bf16 (cosine 0.99999 to fp32).
    re_embedded = wait_for_version(running, early, version)
    np.testing.assert_allclose(
        re_embedded, tower_output(version_dir, [(items[0].item_id, events_pb2.VIEW, start)]),
        atol=TOWER_ATOL,
    )

    # The next events of a user: one tower pass over the history, of the new version.
    user = new_id("user")
    history = [(items[1].item_id, events_pb2.CLICK, start),
               (items[2].item_id, events_pb2.PURCHASE, start + 30_000),
               (items[3].item_id, events_pb2.VIEW, start + 90_000)]
    for item_id, kind, ts in history:
        running.send("events", user, event(user, item_id, kind, ts=ts).SerializeToString())
    enriched_for(running, user, len(history))
    deadline = time.monotonic() + 30
    want = tower_output(version_dir, history)
    while not np.allclose(wait_for_version(running, user, version), want, atol=TOWER_ATOL):
        assert time.monotonic() < deadline, "the user vector never reflected all three events"
        time.sleep(0.1)

    # A new item is embedded by the version's fine-tuned text encoder and head.
    (fresh,) = catalog(1)
    running.send("items", fresh.item_id, fresh.SerializeToString())

    def vector_of_version(records: list[ConsumerRecord]) -> np.ndarray | None:
        for record in records:
            message = events_pb2.ItemVector.FromString(record.value)
            if message.item_id == fresh.item_id and message.model_version == version:
                return np.asarray(message.vector, dtype=np.float32)
        return None

    vector = running.logs["item_vectors"].wait_for(vector_of_version, running.worker,
                                                   what="item vector of the new version")
    # The worker may run the text encoder in bf16 (cosine 0.9999 to fp32).
    assert float(vector @ text_vector(version_dir, fresh)) > 0.999
