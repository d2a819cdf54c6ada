"""Export a trained model into files another process can use without this package:

- ``user_encoder.pt2``: the user tower, ``torch.export``-ed with a dynamic batch size
  and a dynamic length L from :data:`MIN_LENGTH` to ``max_len`` (the manifest's
  ``min_len``); inputs ``item_vectors`` float32 [B, L, D], ``event_types`` int64 [B, L],
  ``gaps_s`` float32 [B, L], ``mask`` bool [B, L] (left-padded, oldest first); output
  float32 [B, D], L2-normalised. Padding slots change nothing, so a caller cuts a batch's
  padding down to its longest history: a new user costs a few slots instead of L.
- ``item_encoder/``: the fine-tuned sentence transformer and its tokenizer
  (``save_pretrained``), and ``item_head.npz``: ``weight`` [D, H], ``bias`` [D] and
  ``max_length``, so a new item's vector is
  ``normalise(mean_pool(item_encoder(text)) @ weight.T + bias)``.
- the checkpoint ``model.pt``: both configs and the state dict, to resume or inspect.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contracts.artifact import CHECKPOINT, ITEM_ENCODER, ITEM_HEAD, PRETRAINED_MODEL, USER_ENCODER
from contracts.itemtext import TEMPLATE
from training.model import TwoTower
from training.train import TrainConfig

log = logging.getLogger(__name__)

# The shortest L the exported tower takes: torch.export specialises lengths below it.
MIN_LENGTH = 3



def export_user_encoder(model: TwoTower, path: Path) -> int | None:
    """``torch.export`` the user tower (fp32, eval mode) for any batch size and any length
    from :data:`MIN_LENGTH` to ``max_len``; returns that shortest length (None: the
    length is fixed, for a ``max_len`` that short)."""
    tower = model.user.eval().float().cpu()
    length, dim = model.cfg.max_len, model.cfg.dim
    example = (
        torch.zeros(2, length, dim),
        torch.zeros(2, length, dtype=torch.int64),
        torch.zeros(2, length),
        torch.ones(2, length, dtype=torch.bool),
    )
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    dims: dict[int, Any] = {0: batch}
    shortest = MIN_LENGTH if length > MIN_LENGTH else None
    if shortest is not None:
        dims[1] = torch.export.Dim("length", min=shortest, max=length)
    shapes = {name: dims for name in ("item_vectors", "event_types", "gaps_s", "mask")}
    program = torch.export.export(tower, example, dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return shortest


def export_item_encoder(model: TwoTower, directory: Path, max_length: int) -> dict[str, Any]:
    """Write ``item_encoder/`` and ``item_head.npz``; returns the manifest entry."""
    if model.text is None:
        raise ValueError("an id-only model has no item text encoder to export")
    encoder = model.text.export_model()
    encoder.save_pretrained(directory / ITEM_ENCODER)
    model.text.tokenizer.save_pretrained(directory / ITEM_ENCODER)  # type: ignore[attr-defined]
    projection = model.items.projection
    np.savez(
        directory / ITEM_HEAD,
        weight=projection.weight.detach().float().cpu().numpy(),
        bias=projection.bias.detach().float().cpu().numpy(),
        max_length=np.int64(max_length),
    )
    return {
        "kind": "finetuned",
        "base": PRETRAINED_MODEL,
        "dir": ITEM_ENCODER,
        "head": ITEM_HEAD,
        "pooling": "mean",
        "max_length": max_length,
        "text": TEMPLATE,
        "normalised": True,
        "trainable_layers": len(model.text.top),
    }


def export_model(
    model: TwoTower, train_cfg: TrainConfig, directory: Path, *, text_max_length: int
) -> dict[str, Any]:
    """Write every exported file into `directory`; returns the manifest's encoder entries."""
    torch.save(
        {"model_config": model.cfg.to_dict(), "train_config": train_cfg.to_dict(),
         "state_dict": {k: v for k, v in model.state_dict().items() if not k.startswith("text.")},
         "text_top": model.text.top.state_dict() if model.text is not None else None},
        directory / CHECKPOINT,
    )
    shortest = export_user_encoder(model, directory / USER_ENCODER)
    user_encoder: dict[str, Any] = {"kind": "transformer", "file": USER_ENCODER,
                                    "max_len": model.cfg.max_len, "normalised": True}
    if shortest is not None:
        user_encoder["min_len"] = shortest
    entries: dict[str, Any] = {
        "user_encoder": user_encoder,
        "item_encoder": {"kind": "id_embedding", "normalised": True},
        "scoring": "cosine",
    }
    if model.text is not None:
        entries["item_encoder"] = export_item_encoder(model, directory, text_max_length)
    return entries


@torch.no_grad()
def item_vectors(model: TwoTower) -> np.ndarray:
    """float32 [n_items, D]: rows of the item table (warm items with their id part)."""
    model.eval()
    return model.item_table()[1:].float().cpu().numpy()
