"""The text half of the item tower: a sentence transformer whose lower layers stay
frozen and whose top layer(s) are fine-tuned on the recommendation objective.

The frozen layers run once: their output for every item text is cached, so a training
step only runs the trainable top layers, on a subset of the items (the batch's
targets first). Pooled outputs of the other items come from a cache that every step
refreshes for the rows it recomputed and `refresh` recomputes entirely. The text of an
item is ``contracts.itemtext``'s; tokens and pooling are ``contracts.encoder``'s
(:func:`~contracts.encoder.tokenize`, :func:`~contracts.encoder.mean_pool`), so the
exported encoder embeds a new item as training did.
"""

from __future__ import annotations

import copy
import time
import logging
from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedModel

from contracts.console import progress_bar
from contracts.encoder import mean_pool, tokenize

log = logging.getLogger(__name__)


class TextTower(nn.Module):
    """Cached frozen-layer states of every item text + the trainable top layers.

    Row 0 of every per-item tensor is padding (an empty text), matching item rows.
    """

    base: PreTrainedModel
    states: torch.Tensor  # [N+1, T, H] frozen-layer output
    token_mask: torch.Tensor  # [N+1, T]
    pooled: torch.Tensor  # [N+1, H] pooled top-layer output, the cache

    def __init__(
        self, model: PreTrainedModel, tokenizer: object, texts: Sequence[str], *,
        trainable_layers: int, max_length: int, batch_size: int = 256, progress: bool = True,
    ) -> None:
        super().__init__()
        object.__setattr__(self, "base", model)  # kept for export, not a submodule
        self.tokenizer = tokenizer
        layers: nn.ModuleList = model.encoder.layer  # type: ignore[assignment,union-attr]
        self.frozen_layers = len(layers) - trainable_layers
        self.top = nn.ModuleList(copy.deepcopy(layers[i]) for i in range(self.frozen_layers, len(layers)))
        self.dim = int(model.config.hidden_size)
        states, masks = _frozen_states(
            model, tokenizer, ["", *texts], self.frozen_layers, max_length, batch_size, progress
        )
        self.register_buffer("states", states, persistent=False)  # [N+1, T, H]
        self.register_buffer("token_mask", masks, persistent=False)  # [N+1, T]
        self.register_buffer("pooled", torch.zeros(len(texts) + 1, self.dim), persistent=False)
        started = time.monotonic()
        self.refresh(progress=progress)
        # what the refresh after training will cost again (a time budget sets it aside)
        self.refresh_s = time.monotonic() - started

    def encode_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """float32 [len(rows), H]: mean-pooled top-layer output of those items."""
        hidden = self.states[rows]
        mask = self.token_mask[rows]
        used = int(mask.sum(1).max().item()) if len(rows) else 1
        hidden, mask = hidden[:, :used], mask[:, :used]  # texts are left-aligned
        additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for layer in self.top:
            out = layer(hidden, attention_mask=additive)
            hidden = out[0] if isinstance(out, tuple) else out
        return mean_pool(hidden, mask)

    def features(self, live_rows: torch.Tensor | None) -> torch.Tensor:
        """float32 [N+1, H]: pooled text of every item; `live_rows` are recomputed with
        gradients (and written back to the cache), the rest come from the cache."""
        if live_rows is None or len(live_rows) == 0:
            return self.pooled
        live = self.encode_rows(live_rows)
        with torch.no_grad():
            self.pooled[live_rows] = live.detach()
        return self.pooled.index_put((live_rows,), live)

    @torch.no_grad()
    def refresh(self, batch_size: int = 512, progress: bool = False) -> None:
        """Recompute the pooled text of every item (after training, before export)."""
        n = self.states.shape[0]
        for first in progress_bar(range(0, n, batch_size), desc="text", enabled=progress):
            rows = torch.arange(first, min(first + batch_size, n), device=self.states.device)
            self.pooled[rows] = self.encode_rows(rows)

    def export_model(self) -> PreTrainedModel:
        """A copy of the full sentence transformer with the fine-tuned top layers."""
        model = copy.deepcopy(self.base).float().cpu()
        for i, layer in enumerate(self.top):
            model.encoder.layer[self.frozen_layers + i].load_state_dict(layer.state_dict())
        return model


@torch.no_grad()
def _frozen_states(
    model: PreTrainedModel, tokenizer: object, texts: list[str], frozen_layers: int,
    max_length: int, batch_size: int, progress: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states after `frozen_layers` layers ``[N, T, H]`` and token masks ``[N, T]``,
    padded on the right to the longest text."""
    enc = tokenize(tokenizer, texts, max_length)
    n, t = enc["input_ids"].shape
    token_types = enc.get("token_type_ids", torch.zeros_like(enc["input_ids"]))
    counts = enc["attention_mask"].sum(1)
    order = torch.argsort(counts, stable=True)  # similar lengths share a batch: less padding
    states = torch.zeros(n, t, int(model.config.hidden_size))
    for first in progress_bar(range(0, n, batch_size), desc="text cache", enabled=progress):
        rows = order[first : first + batch_size]
        width = int(counts[rows].max())  # texts are left-aligned: the rest is padding
        out = model(
            input_ids=enc["input_ids"][rows, :width],
            attention_mask=enc["attention_mask"][rows, :width],
            token_type_ids=token_types[rows, :width],
            output_hidden_states=True,
        )
        states[rows, :width] = out.hidden_states[frozen_layers]  # [0] = embeddings
    log.info("cached text states of %s items, %s tokens, after %s layers", n, t, frozen_layers)
    return states, enc["attention_mask"].to(torch.bool)
