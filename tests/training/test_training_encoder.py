"""Item text template and the real all-MiniLM-L6-v2 encoder on CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.encoder import ItemEncoder, cpu_has_native_bf16, default_model_dir, item_text
from training.errors import ModelLoadError


@pytest.mark.parametrize(
    ("title", "categories", "description", "expected"),
    [
        ("Toy Story", ["Animation", "Comedy"], "Released in 1995",
         "Toy Story. Animation, Comedy. Released in 1995"),
        ("Toy Story", [], "Released in 1995", "Toy Story. Released in 1995"),
        ("Hat", ["Clothing"], "", "Hat. Clothing"),
        ("Hat", [], "", "Hat"),
    ],
)
def test_item_text(title: str, categories: list[str], description: str, expected: str) -> None:
    assert item_text(title, categories, description) == expected


def test_native_bf16_flag_detection() -> None:
    assert cpu_has_native_bf16("flags : fpu avx512f avx512_bf16 amx_tile")
    assert cpu_has_native_bf16("flags : amx_bf16")
    assert not cpu_has_native_bf16("flags : fpu avx2 avx512f")


@pytest.fixture(scope="module")
def encoder() -> ItemEncoder:
    return ItemEncoder.load(default_model_dir(), device="cpu", max_length=64, bf16="off")


def test_vectors_are_normalised_ordered_and_meaningful(encoder: ItemEncoder) -> None:
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


def test_bf16_keeps_the_vectors(encoder: ItemEncoder) -> None:
    texts = ["Toy Story. Animation. Released in 1995", "Heat. Action, Crime, Thriller"]
    fast = ItemEncoder.load(default_model_dir(), device="cpu", max_length=64, bf16="on")
    cosine = (encoder.encode(texts, progress=False) * fast.encode(texts, progress=False)).sum(1)
    assert np.all(cosine > 0.99)


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a Hugging Face model directory"):
        ItemEncoder.load(tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_vectors(encoder: ItemEncoder) -> None:
    texts = ["Toy Story. Animation. Released in 1995", "Heat. Action, Crime, Thriller"]
    gpu = ItemEncoder.load(default_model_dir(), device="cuda", max_length=64)
    assert gpu.device.type == "cuda"
    cosine = (encoder.encode(texts, progress=False) * gpu.encode(texts, progress=False)).sum(1)
    assert np.all(cosine > 0.99)
