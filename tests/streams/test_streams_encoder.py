"""streams.encoder: the real all-MiniLM-L6-v2 through mean pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streams.encoder import ItemEncoder, native_bf16, pick_device, pretrained_model_dir, use_bf16
from streams.errors import ModelLoadError

TEXTS = [
    "Toy Story (1995). Animation, Children's, Comedy",
    "Toy Story 2 (1999). Animation, Children's, Comedy",
    "Heat (1995). Action, Crime, Thriller",
    "Stainless steel kitchen knife set. Kitchen, Cutlery",
]


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


def test_bf16_keeps_neighbours(encoder: ItemEncoder) -> None:
    fp32 = encoder.encode(TEXTS)
    encoder.bf16 = True
    try:
        bf16 = encoder.encode(TEXTS)
    finally:
        encoder.bf16 = False
    cosine = np.sum(fp32 * bf16, axis=1)
    assert cosine.min() > 0.99


def test_device_and_bf16_choice() -> None:
    assert pick_device("cpu").type == "cpu"
    assert use_bf16(torch.device("cpu"), "on") and not use_bf16(torch.device("cpu"), "off")
    assert native_bf16("fpu avx512f avx512_bf16 sse") and not native_bf16("fpu avx512f")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError):
            pick_device("cuda")


def test_not_a_model_directory() -> None:
    with pytest.raises(ModelLoadError):
        ItemEncoder.load(pretrained_model_dir() / "no-such-dir")


@pytest.mark.gpu
def test_cuda_gives_the_cpu_vectors(encoder: ItemEncoder) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gpu = ItemEncoder.load(pretrained_model_dir(), device="cuda", bf16="auto", max_length=64)
    assert gpu.device.type == "cuda"
    cosine = np.sum(encoder.encode(TEXTS) * gpu.encode(TEXTS), axis=1)
    assert cosine.min() > 0.99
