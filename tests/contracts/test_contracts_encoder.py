"""contracts.encoder: the real all-MiniLM-L6-v2 through mean pooling, a head, the norm."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from contracts.encoder import (
    EncoderError,
    ItemEncoder,
    load_head,
    load_pretrained,
    mean_pool,
    native_bf16,
    pick_device,
    pretrained_model_dir,
    tokenize,
    use_bf16,
)
from contracts.itemtext import MAX_TOKENS

TEXTS = [
    "Toy Story (1995). Animation, Children's, Comedy",
    "Toy Story 2 (1999). Animation, Children's, Comedy",
    "Heat (1995). Action, Crime, Thriller",
    "Stainless steel kitchen knife set. Kitchen, Cutlery",
]


@pytest.fixture(scope="module")
def encoder() -> ItemEncoder:
    return ItemEncoder.load(pretrained_model_dir(), device="cpu", bf16="off", max_length=64)


def test_vectors_are_unit_float32_of_the_model_dim(encoder: ItemEncoder) -> None:
    vectors = encoder.encode(TEXTS)
    assert vectors.shape == (4, 384) and encoder.dim == 384
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_similar_titles_are_closer_than_unrelated(encoder: ItemEncoder) -> None:
    vectors = encoder.encode(TEXTS)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] > similarity[0, 3]
    assert similarity[0, 1] > 0.8


def test_batching_and_padding_do_not_change_vectors(encoder: ItemEncoder) -> None:
    together = encoder.encode(TEXTS)
    alone = np.stack([encoder.encode([text])[0] for text in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-4)
    assert encoder.encode([]).shape == (0, 384)


def test_vectors_keep_the_order_of_the_texts_in_any_batch_size(encoder: ItemEncoder) -> None:
    texts = [
        "Toy Story 2. Animation, Children's, Comedy. Released in 1999",
        "A cordless hammer drill for concrete walls",
        "Toy Story. Animation, Children's, Comedy. Released in 1995",
        "Hat",
    ]
    vectors = encoder.encode(texts, batch_size=3, progress=False)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 2] > 0.8 > similarity[0, 1]
    alone = encoder.encode([texts[1]], progress=False)  # batching and order do not matter
    np.testing.assert_allclose(alone[0], vectors[1], atol=1e-5)


def test_bf16_keeps_neighbours(encoder: ItemEncoder) -> None:
    fp32 = encoder.encode(TEXTS)
    fast = ItemEncoder.load(pretrained_model_dir(), device="cpu", bf16="on", max_length=64)
    assert np.sum(fp32 * fast.encode(TEXTS), axis=1).min() > 0.99


def test_a_text_is_cut_at_the_token_limit(encoder: ItemEncoder) -> None:
    assert ItemEncoder.load(pretrained_model_dir(), device="cpu").max_length == MAX_TOKENS == 256
    text = "Heat (1995). Action, Crime, Thriller. A crew of thieves and the detective after them"
    tokenizer = load_pretrained(pretrained_model_dir())[0]
    ids = tokenizer(text)["input_ids"]
    assert len(ids) > 20
    kept = tokenizer.decode(ids[1:7])  # what fits in 8: [CLS], 6 word pieces, [SEP]
    short = ItemEncoder.load(pretrained_model_dir(), device="cpu", bf16="off", max_length=8)
    cut = short.encode([text])[0]
    np.testing.assert_allclose(cut, short.encode([kept])[0], atol=1e-5)
    assert cut @ encoder.encode([text])[0] < 0.99  # at 64 tokens the whole text counts


def test_a_head_projects_the_pooled_text(encoder: ItemEncoder, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(16, 384)).astype(np.float32)
    bias = rng.normal(size=16).astype(np.float32)
    np.savez(tmp_path / "item_head.npz", weight=weight, bias=bias, max_length=np.int64(64))
    headed = ItemEncoder.load(pretrained_model_dir(), device="cpu", bf16="off", max_length=64,
                              head=tmp_path / "item_head.npz")
    assert headed.dim == 16
    tokenizer, model = load_pretrained(pretrained_model_dir())
    batch = tokenize(tokenizer, TEXTS, 64)
    with torch.no_grad():
        pooled = mean_pool(model(**batch).last_hidden_state, batch["attention_mask"]).numpy()
    expected = pooled @ weight.T + bias
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(headed.encode(TEXTS), expected, atol=1e-5)


def test_a_head_that_does_not_fit_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "broken.npz").write_bytes(b"not a head")
    with pytest.raises(EncoderError, match="not an item head"):
        load_head(tmp_path / "broken.npz")
    np.savez(tmp_path / "mismatch.npz", weight=np.zeros((4, 384)), bias=np.zeros(3))
    with pytest.raises(EncoderError, match="do not fit"):
        load_head(tmp_path / "mismatch.npz")
    np.savez(tmp_path / "narrow.npz", weight=np.zeros((4, 10)), bias=np.zeros(4))
    with pytest.raises(EncoderError, match="expects 10 inputs, model has 384"):
        ItemEncoder.load(pretrained_model_dir(), device="cpu", head=tmp_path / "narrow.npz")


def test_device_and_bf16_choice() -> None:
    assert pick_device("cpu").type == "cpu"
    assert use_bf16(torch.device("cpu"), "on") and not use_bf16(torch.device("cpu"), "off")
    assert native_bf16("fpu avx512f avx512_bf16 sse") and not native_bf16("fpu avx512f")
    assert native_bf16("flags : amx_bf16") and not native_bf16("flags : fpu avx2 avx512f")
    if not torch.cuda.is_available():
        with pytest.raises(EncoderError):
            pick_device("cuda")


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="not a Hugging Face model directory"):
        ItemEncoder.load(pretrained_model_dir() / "no-such-dir")
    with pytest.raises(EncoderError, match="not a Hugging Face model directory"):
        ItemEncoder.load(tmp_path)


def test_the_contracts_import_without_torch_or_transformers() -> None:
    """Serving imports the contracts; only embedding loads torch and transformers."""
    code = ("import sys, contracts.artifact, contracts.encoder, contracts.itemtext; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


@pytest.mark.gpu
def test_cuda_gives_the_cpu_vectors(encoder: ItemEncoder) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gpu = ItemEncoder.load(pretrained_model_dir(), device="cuda", bf16="auto", max_length=64)
    assert gpu.device.type == "cuda"
    cosine = np.sum(encoder.encode(TEXTS) * gpu.encode(TEXTS), axis=1)
    assert cosine.min() > 0.99
