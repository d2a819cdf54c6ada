"""Streams embeds an item as training did: the same text, token limit and head give the
vector the version stores for it, for a pretrained and for a fine-tuned version.

The items' texts run to about 220 tokens, so a shorter limit on either side (streams once
cut at 128) would show; the fine-tuned model is a tiny one trained here (a few seconds on
a CPU).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from test_streams_releases import tiny_recipe

from contracts.artifact import pretrained_item_encoder, read_manifest, write_artifact
from contracts.encoder import ItemEncoder, load_pretrained, pretrained_model_dir
from contracts.itemtext import MAX_TOKENS, item_text
from protos import events_pb2
from streams.errors import ModelLoadError, StreamsError
from streams.live import EncoderOptions, load_model, pretrained_dir
from streams.model import ModelChoice, choose_model, read_version
from training.data import from_event_log
from training.eventlog import EventLog
from training.export import export_model, item_vectors
from training.job import catalog_rows
from training.offline import TEXT_MAX_LENGTH, build_model, split_dataset
from training.settings import TrainingSettings
from training.train import train

OPTIONS = EncoderOptions(device="cpu", bf16="off", half_life_ms=3_600_000.0)
STORY = ("A retired safecracker takes one last job in a city that never sleeps, and the "
         "crew he gathers, a driver, a forger and a nervous young lookout, learn on the "
         "night of the heist that the vault holds something else entirely. ")


def long_items(n: int) -> list[events_pb2.Item]:
    """Catalog items whose texts run to about 220 tokens."""
    return [events_pb2.Item(item_id=f"i{k}", title=f"Heist {k}", categories=["Crime", "Drama"],
                            description=STORY * 4 + f"Part {k} of the series.")
            for k in range(n)]


def event_log(items: list[events_pb2.Item]) -> EventLog:
    log = EventLog(topic="events.enriched", ranges={0: (0, 0)})
    for u in range(24):
        for t in range(6):
            item = items[(u + t) % len(items)]
            log.add(events_pb2.EnrichedEvent(
                event=events_pb2.Event(user_id=f"u{u}", item_id=item.item_id,
                                       type=events_pb2.CLICK, timestamp_ms=1_000_000 + 60_000 * t),
                item=item, weight=1.0))
    return log


def streams_vectors(version_dir: Path, items: list[events_pb2.Item]) -> np.ndarray:
    model = load_model(read_version(version_dir, version_dir.name, pretrained_model_dir()), OPTIONS)
    return model.item_encoder.encode([item_text(item) for item in items])


def test_texts_are_long_enough_to_tell_the_limits_apart() -> None:
    tokenizer, _ = load_pretrained(pretrained_model_dir())
    assert 128 < len(tokenizer(item_text(long_items(1)[0]))["input_ids"]) <= MAX_TOKENS


def test_a_pretrained_version_is_embedded_as_training_embedded_it(tmp_path: Path) -> None:
    items = long_items(3)
    catalog = {item.item_id: item for item in items}
    settings = TrainingSettings()
    # the bootstrap run: its catalog rows, its encoder as `python -m training` loads it
    encoder = ItemEncoder.load(pretrained_model_dir(), device="cpu", bf16="off",
                               max_length=settings.max_length)
    ids, texts = catalog_rows(catalog, event_log(items))
    vectors = encoder.encode(texts, batch_size=settings.encode_batch_size)
    path = write_artifact(
        tmp_path, now=datetime.now(UTC), item_ids=ids, vectors=vectors,
        window={"topic": "events.enriched", "partitions": {}}, n_events=0, metrics={},
        config={}, write_encoders=lambda _: {"item_encoder": pretrained_item_encoder(encoder.max_length)},
    )
    assert read_manifest(path, path.name)["item_encoder"]["max_length"] == MAX_TOKENS
    np.testing.assert_allclose(streams_vectors(path, [catalog[i] for i in ids]), vectors, atol=1e-5)
    # base, before any version: the same limit, so the first version changes no vector
    base = load_model(choose_model(tmp_path / "no-store", pretrained_model_dir()), OPTIONS)
    assert base.item_encoder.max_length == MAX_TOKENS
    np.testing.assert_allclose(base.item_encoder.encode([item_text(catalog[i]) for i in ids]),
                               vectors, atol=1e-5)


@pytest.mark.slow
def test_a_fine_tuned_version_is_embedded_as_training_embedded_it(tmp_path: Path) -> None:
    items = long_items(7)
    cold = items[-1]  # no event names it: training's vector is its text part alone
    dataset = from_event_log(event_log(items[:-1]), {item.item_id: item for item in items})
    assert dataset.item_ids[-1] == cold.item_id
    recipe = tiny_recipe(len(items))
    model = build_model(recipe, dataset, pretrained_model_dir(), progress=False)
    train(model, split_dataset(dataset).train, recipe.train, device=torch.device("cpu"),
          progress=False)
    vectors = item_vectors(model)
    path = write_artifact(
        tmp_path, now=datetime.now(UTC), item_ids=dataset.item_ids, vectors=vectors,
        window={"topic": "tiny", "partitions": {}}, n_events=len(dataset.events), metrics={},
        config={}, write_encoders=lambda d: export_model(model, recipe.train, d,
                                                         text_max_length=TEXT_MAX_LENGTH),
    )
    choice = read_version(path, path.name, pretrained_model_dir())
    assert choice.text_max_length == TEXT_MAX_LENGTH and choice.head is not None
    np.testing.assert_allclose(streams_vectors(path, [cold])[0], vectors[-1], atol=1e-4)


def test_an_encoder_that_cannot_load_is_a_streams_error(tmp_path: Path) -> None:
    """What a release loader catches (the worker keeps its version) and start-up reports."""
    (tmp_path / "item_head.npz").write_bytes(b"not a head")
    broken = ModelChoice("v1", pretrained_model_dir(), tmp_path, head=tmp_path / "item_head.npz")
    with pytest.raises(ModelLoadError, match="not an item head") as raised:
        load_model(broken, OPTIONS)
    assert isinstance(raised.value, StreamsError)
    with pytest.raises(ModelLoadError, match="not a Hugging Face model directory"):
        load_model(ModelChoice("v1", tmp_path), OPTIONS)
    assert pretrained_dir(None) == pretrained_model_dir()
    assert pretrained_dir(tmp_path) == tmp_path

