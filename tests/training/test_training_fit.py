"""End to end on a tiny synthetic catalog: train the two towers, check they learned the
pattern, export them, and load the exported files in a fresh interpreter that imports
only torch, transformers and numpy."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contracts.artifact import read_manifest, write_artifact
from contracts.encoder import pretrained_model_dir
from training.data import Dataset
from training.export import export_model, item_vectors
from training.offline import TEXT_MAX_LENGTH, Recipe, build_model, split_dataset
from training.quality import evaluate_scorer, model_scorer, popular_scorer
from training.sequences import Interactions, windows
from training.train import TrainConfig, train
from training.model import ModelConfig

pytestmark = pytest.mark.slow  # about half a minute on two busy cores

N_ITEMS = 24
GENRES = ("space opera", "cooking show", "crime drama", "nature film")


def synthetic(n_users: int = 60, length: int = 16, seed: int = 0) -> Dataset:
    """Each user walks a cycle of items: item k is followed by item k + 1 (mod N)."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(n_users):
        start = int(rng.integers(N_ITEMS))
        for t in range(length):
            users.append(f"u{u}")
            items.append(f"i{(start + t) % N_ITEMS}")
            times.append(1_000_000 + 60_000 * t)
    ids = [f"i{k}" for k in range(N_ITEMS)] + ["cold"]  # "cold" is never interacted with
    texts = [f"Item {k}. {GENRES[k % 4]}. episode {k}" for k in range(N_ITEMS)]
    texts.append("A brand new nature film about whales")
    events = Interactions(
        user_ids=np.array(users, dtype=object), item_ids=np.array(items, dtype=object),
        timestamps_ms=np.array(times, dtype=np.int64),
        event_types=np.full(len(users), 1, dtype=np.int64),
    )
    return Dataset(name="synthetic", events=events, item_ids=ids, item_texts=texts)


def tiny_recipe(n_items: int) -> Recipe:
    return Recipe(
        model=ModelConfig(n_items=n_items, dim=16, max_len=8, n_blocks=1, n_heads=2,
                          dropout=0.1, temperature=0.1),
        train=TrainConfig(epochs=25, time_budget_s=600, batch_size=16, lr=5e-3,
                          warmup_steps=5, bf16=False, text_items_per_step=8),
        text_layers=1,
    )


@pytest.fixture(scope="module")
def trained() -> tuple:
    dataset = synthetic()
    split = split_dataset(dataset)
    rec = tiny_recipe(len(dataset.item_ids))
    model = build_model(rec, dataset, pretrained_model_dir(), progress=False)
    result = train(model, split.train, rec.train, device=torch.device("cpu"), progress=False)
    return dataset, split, model, result


def test_training_learns_the_next_item_pattern(trained: tuple) -> None:
    dataset, split, model, result = trained
    assert result.losses[-1] < result.losses[0]
    users = split.eval_users
    ends = split.full.lengths()[users] - 1
    ours = evaluate_scorer(model_scorer(model, split.full, torch.device("cpu"), bf16=False),
                           users, ends, split.test_targets, seqs=split.full, progress=False)
    popular = evaluate_scorer(popular_scorer(split.train, len(dataset.item_ids)), users, ends,
                              split.test_targets, seqs=split.full, progress=False)
    assert ours["unfiltered"]["hr@10"] > 0.9 > popular["unfiltered"]["hr@10"]
    # seen excluded, few of the 24 items are left: most ten are a hit, the order tells
    assert ours["seen_excluded"]["hr@10"] > 0.9
    assert ours["seen_excluded"]["mrr"] > popular["seen_excluded"]["mrr"] + 0.2
    assert model.warm[-1] == 0 and model.warm[1:-1].min() == 1  # "cold" has no id part


LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from transformers import AutoModel, AutoTokenizer
    directory, inputs = sys.argv[1], np.load(sys.argv[2], allow_pickle=True)
    manifest = json.load(open(f"{directory}/manifest.json"))
    user = torch.export.load(f"{directory}/{manifest['user_encoder']['file']}").module()
    with torch.no_grad():
        users = user(torch.from_numpy(inputs["item_vectors"]),
                     torch.from_numpy(inputs["event_types"]),
                     torch.from_numpy(inputs["gaps_s"]), torch.from_numpy(inputs["mask"]))
    spec = manifest["item_encoder"]
    tokenizer = AutoTokenizer.from_pretrained(f"{directory}/{spec['dir']}")
    encoder = AutoModel.from_pretrained(f"{directory}/{spec['dir']}").eval()
    head = np.load(f"{directory}/{spec['head']}")
    batch = tokenizer(list(inputs["texts"]), padding=True, truncation=True,
                      max_length=int(head["max_length"]), return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state.numpy()
    mask = batch["attention_mask"].numpy()[..., None].astype(np.float32)
    pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    items = pooled @ head["weight"].T + head["bias"]
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    leaked = [m for m in sys.modules if m.startswith("training")]
    np.savez(sys.argv[3], users=users.numpy(), items=items, leaked=np.array(leaked, dtype=str))
    """
)


def test_exported_files_reproduce_the_training_vectors(trained: tuple, tmp_path: Path) -> None:
    dataset, split, model, result = trained
    vectors = item_vectors(model)
    store = tmp_path / "store"
    path = write_artifact(
        store, now=datetime.now(UTC), item_ids=dataset.item_ids, vectors=vectors,
        window={"topic": "synthetic", "partitions": {}}, n_events=len(dataset.events),
        metrics={}, config={},
        write_encoders=lambda d: export_model(model, tiny_recipe(1).train, d,
                                              text_max_length=TEXT_MAX_LENGTH),
    )
    manifest = read_manifest(path, path.name)
    assert manifest["user_encoder"] == {"kind": "transformer", "file": "user_encoder.pt2",
                                        "max_len": 8, "min_len": 3, "normalised": True}
    assert manifest["item_encoder"]["kind"] == "finetuned" and manifest["scoring"] == "cosine"

    # inputs as serving builds them: rows of item_vectors.npy, left-padded; batch of 3
    users = split.eval_users[:3]
    w = windows(split.full, users, split.full.lengths()[users] - 1, 8)
    w.items[0, :3] = 0  # a shorter history
    w.mask[0, :3] = False
    w.types[0, :3] = 0
    w.gaps_s[0, :3] = 0
    table = np.vstack([np.zeros((1, vectors.shape[1]), np.float32), np.load(path / "item_vectors.npy")])
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, item_vectors=table[w.items], event_types=w.types, gaps_s=w.gaps_s,
             mask=w.mask, texts=np.array(dataset.item_texts, dtype=object))
    out = tmp_path / "out.npz"
    subprocess.run([sys.executable, "-c", LOADER, str(path), str(inputs), str(out)], check=True)
    got = np.load(out)
    assert list(got["leaked"]) == []

    with torch.no_grad():
        expected = model.user(torch.from_numpy(table[w.items]), torch.from_numpy(w.types),
                              torch.from_numpy(w.gaps_s), torch.from_numpy(w.mask)).numpy()
    np.testing.assert_allclose(got["users"], expected, atol=1e-4)
    # the cold item is in item_vectors.npy by its text alone: the recipe reproduces it
    np.testing.assert_allclose(got["items"][-1], vectors[-1], atol=1e-4)
    # for warm items the recipe gives their text part (what a re-listed item would get)
    with torch.no_grad():
        text_part = F.normalize(model.items.projection(model.text.pooled[1:]), dim=-1).numpy()
    np.testing.assert_allclose(got["items"], text_part, atol=1e-4)
    assert json.loads((path / "item_ids.json").read_text())[-1] == "cold"
