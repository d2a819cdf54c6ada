"""The two towers. Score = dot(user vector, item vector), both L2-normalised (cosine,
``score="cosine"``, what the shipped model uses), so FAISS inner-product search over the
item vectors serves the model; ``score="dot"`` leaves both unnormalised (SASRec's plain
dot product, for the ID-only baselines).

User tower: a causal transformer over the user's recent item vectors, event types and
time gaps; the output at the newest position is the user vector. Item tower: a learned
id embedding (warm items) plus a projection of the item text through the top layer(s)
of a sentence transformer (``training.texttower``); a never-seen item has only the
text part.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from training.texttower import TextTower

N_EVENT_TYPES = 100  # protobuf EventType values 0..99 (0 = unspecified / padding)
N_GAP_BUCKETS = 40  # floor(log2(1 + seconds)), 2**40 s is far beyond any history


@dataclass
class ModelConfig:
    """Shape of the model; saved inside every checkpoint."""

    n_items: int
    dim: int = 64
    max_len: int = 200
    n_blocks: int = 2
    n_heads: int = 2
    ffn_mult: int = 4
    dropout: float = 0.2
    temperature: float = 0.05  # logits = cosine / temperature (1 for "dot")
    score: str = "cosine"  # cosine | dot
    block: str = "pre"  # pre (pre-norm, GELU) | sasrec (SASRec's: norm on the query, ReLU)
    attn_dropout: float = 0.0
    use_ids: bool = True
    use_text: bool = True
    use_context: bool = True  # event-type and time-gap embeddings
    text_dim: int = 384
    # newest: a slot's position counts back from the newest event (SASRec's left padding);
    # oldest: it counts on from the oldest event in the window (SASRec+'s right padding)
    positions: str = "newest"
    # a learned bias per head on each attention score from the time between the two events
    # (log2 buckets of seconds; HSTU's relative attention bias, the time part)
    time_bias: bool = False

    def __post_init__(self) -> None:
        if self.positions not in ("newest", "oldest"):
            raise ValueError(f"positions must be 'newest' or 'oldest', not {self.positions!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pair_buckets(gaps_s: torch.Tensor) -> torch.Tensor:
    """int64 [B, L, L]: log2 bucket of the time from event k (column) to event q (row),
    0 where k is the later one (a causal mask hides those anyway)."""
    between = (gaps_s[:, None, :] - gaps_s[:, :, None]).clamp(min=0.0)  # [B, Lq, Lk], s
    return torch.floor(torch.log2(1.0 + between)).to(torch.int64).clamp(max=N_GAP_BUCKETS - 1)


def gap_buckets(gaps_s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """int64 [B, L]: log2 bucket of the time since the *previous* event.

    The inputs are seconds before the newest event; differences of neighbours give each
    event's own gap, which uses nothing after that event (safe for causal training).
    The oldest real event gets bucket 0.
    """
    previous = torch.cat([gaps_s[:, :1], gaps_s[:, :-1]], dim=1)
    has_previous = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], dim=1) & mask
    own = torch.where(has_previous, (previous - gaps_s).clamp(min=0.0), torch.zeros_like(gaps_s))
    bucket = torch.floor(torch.log2(1.0 + own)).to(torch.int64) + 1
    return torch.where(has_previous, bucket.clamp(max=N_GAP_BUCKETS - 1), torch.zeros_like(bucket))


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a GELU feed-forward."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.dim, cfg.ffn_mult * cfg.dim),
            nn.GELU(),
            nn.Linear(cfg.ffn_mult * cfg.dim, cfg.dim),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor,
                newest: bool = False) -> torch.Tensor:
        """[B, L, D] -> [B, L, D]; with `newest`, the newest position's output alone
        ([B, 1, D]): the same values for a fraction of the work."""
        b, l, d = x.shape  # [B, L, D]; allowed: bool [B, 1, L, L]
        heads, width = self.n_heads, d // self.n_heads
        normed = self.norm1(x)
        if newest:
            q = F.linear(normed[:, -1:], self.qkv.weight[:d], self.qkv.bias[:d])
            q = q.view(b, 1, heads, width)
            k, v = F.linear(normed, self.qkv.weight[d:], self.qkv.bias[d:]).view(
                b, l, 2, heads, width).unbind(2)
            x, allowed, l = x[:, -1:], allowed[:, :, -1:], 1
        else:
            q, k, v = self.qkv(normed).view(b, l, 3, heads, width).unbind(2)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=allowed,
        )  # no attention dropout: on a CPU its mask costs more than the rest of the block  # [B, H, L, D/H]
        x = x + self.drop(self.out(attended.transpose(1, 2).reshape(b, l, d)))
        return x + self.drop(self.ffn(self.norm2(x)))


class SASRecBlock(nn.Module):
    """SASRec's block (Kang & McAuley 2018, as in its PyTorch port that SASRec+ uses):
    the query is layer-normed and is the residual, keys and values are not; then a
    layer norm, a ReLU feed-forward with dropout inside and its own residual."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.attn_dropout = cfg.n_heads, cfg.attn_dropout
        self.norm1 = nn.LayerNorm(cfg.dim, eps=1e-8)
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.kv = nn.Linear(cfg.dim, 2 * cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.dim, cfg.ffn_mult * cfg.dim), nn.Dropout(cfg.dropout), nn.ReLU(),
            nn.Linear(cfg.ffn_mult * cfg.dim, cfg.dim), nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor,
                newest: bool = False) -> torch.Tensor:
        """As :meth:`Block.forward`."""
        b, l, d = x.shape  # [B, L, D]; allowed: bool [B, 1, L, L]
        k, v = self.kv(x).view(b, l, 2, self.n_heads, d // self.n_heads).unbind(2)
        if newest:
            x, allowed, l = x[:, -1:], allowed[:, :, -1:], 1
        query = self.norm1(x)
        q = self.q(query).view(b, l, self.n_heads, d // self.n_heads)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )  # [B, H, L, D/H]
        x = self.norm2(query + self.out(attended.transpose(1, 2).reshape(b, l, d)))
        return x + self.ffn(x)


class UserTower(nn.Module):
    """(item vectors, event types, gaps, mask) of the newest L events, left-padded ->
    an L2-normalised vector per position; the last position is the user vector."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.positions = nn.Embedding(cfg.max_len, cfg.dim)  # see ModelConfig.positions
        self.types = nn.Embedding(N_EVENT_TYPES, cfg.dim)
        self.gaps = nn.Embedding(N_GAP_BUCKETS, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        kind = {"pre": Block, "sasrec": SASRecBlock}[cfg.block]
        self.blocks = nn.ModuleList(kind(cfg) for _ in range(cfg.n_blocks))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-8 if cfg.block == "sasrec" else 1e-5)
        for table in (self.positions, self.types, self.gaps):
            nn.init.normal_(table.weight, std=0.02)
        # bucket -> a bias per head, shared by the blocks; zero at first (plain attention)
        self.time_bias = nn.Embedding(N_GAP_BUCKETS, cfg.n_heads) if cfg.time_bias else None
        if self.time_bias is not None:
            nn.init.zeros_(self.time_bias.weight)

    def sequence(
        self, item_vectors: torch.Tensor, event_types: torch.Tensor, gaps_s: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """float32 [B, L, D]: the user state after each position (normalised for
        ``score="cosine"``)."""
        x, allowed, real = self._inputs(item_vectors, event_types, gaps_s, mask)
        out = self.norm(self._blocks(x, allowed, real)).float()
        return F.normalize(out, dim=-1) if self.cfg.score == "cosine" else out

    def _inputs(
        self, item_vectors: torch.Tensor, event_types: torch.Tensor, gaps_s: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first block's input [B, L, D], what each slot may attend to [B, 1, L, L]
        (bool; with ``time_bias`` a float [B, H, L, L], the bias where allowed and -inf
        elsewhere), and which slots are real [B, L, 1]."""
        b, l, _ = item_vectors.shape
        if self.cfg.positions == "oldest":
            # the oldest real event of each row is position 0 (padding slots are zeroed below)
            index = (mask.to(torch.int64).cumsum(dim=1) - 1).clamp(min=0)
            x = item_vectors * math.sqrt(self.cfg.dim) + self.positions(index)
        else:
            x = item_vectors * math.sqrt(self.cfg.dim) + self.positions.weight[-l:]
        if self.cfg.use_context:
            types = event_types.clamp(0, N_EVENT_TYPES - 1)
            x = x + self.types(types) + self.gaps(gap_buckets(gaps_s, mask))
        x = self.drop(x * mask.unsqueeze(-1).to(x.dtype))
        causal = torch.ones(l, l, dtype=torch.bool, device=x.device).tril()
        # a slot sees real slots up to itself, and always itself (padding rows stay finite)
        allowed = (causal & mask[:, None, :]) | torch.eye(l, dtype=torch.bool, device=x.device)
        real = mask.unsqueeze(-1).to(x.dtype)
        if self.time_bias is None:
            return x, allowed.unsqueeze(1), real
        bias = self.time_bias(pair_buckets(gaps_s)).permute(0, 3, 1, 2).to(x.dtype)
        return x, bias.masked_fill(~allowed.unsqueeze(1), float("-inf")), real

    def _blocks(self, x: torch.Tensor, allowed: torch.Tensor, real: torch.Tensor, *,
                newest: bool = False) -> torch.Tensor:
        """Every block over `x`; with `newest` the last one for the newest slot only."""
        last = len(self.blocks) - 1
        for n, block in enumerate(self.blocks):
            only = newest and n == last
            x = block(x, allowed, newest=only)
            if self.cfg.block == "sasrec":
                x = x * (real[:, -1:] if only else real)  # SASRec zeroes padding slots
        return x

    def forward(
        self, item_vectors: torch.Tensor, event_types: torch.Tensor, gaps_s: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """float32 [B, D]: the user vector (state after the newest event), what
        ``sequence(...)[:, -1]`` is, with the last block run for the newest position only."""
        x, allowed, real = self._inputs(item_vectors, event_types, gaps_s, mask)
        x = self._blocks(x, allowed, real, newest=True)[:, 0]
        out = self.norm(x).float()
        return F.normalize(out, dim=-1) if self.cfg.score == "cosine" else out


class ItemTable(nn.Module):
    """All item vectors ``[n_items + 1, D]`` (row 0 = padding, zeros):
    ``normalise(id_embedding[row] + projection(text_features[row]))`` (not normalised
    for ``score="dot"``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.use_ids:
            self.ids = nn.Embedding(cfg.n_items + 1, cfg.dim)
            # small, as the rows are normalised: an Adam step of ~lr then turns a row
            # noticeably (at std 1 an id-only model sat at popularity for epochs)
            nn.init.normal_(self.ids.weight, std=0.02)
        if cfg.use_text:
            self.projection = nn.Linear(cfg.text_dim, cfg.dim)

    def forward(
        self, text_features: torch.Tensor | None, id_keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`text_features`: float [n_items + 1, text_dim] (row 0 ignored) or None;
        `id_keep`: optional float [n_items + 1] multiplier of the id part (id dropout,
        and 0 for items never seen in training)."""
        parts = []
        if self.cfg.use_ids:
            ids = self.ids.weight
            parts.append(ids if id_keep is None else ids * id_keep[:, None])
        if self.cfg.use_text:
            if text_features is None:
                raise ValueError("this model needs text features")
            parts.append(self.projection(text_features))
        table = torch.stack(parts).sum(0).float()
        if self.cfg.score == "cosine":
            table = F.normalize(table, dim=-1)
        return torch.cat([torch.zeros_like(table[:1]), table[1:]])


class TwoTower(nn.Module):
    """User tower + item table (+ optional text tower) under one module."""

    warm: torch.Tensor  # [n_items + 1]

    def __init__(self, cfg: ModelConfig, text: TextTower | None) -> None:
        super().__init__()
        self.cfg = cfg
        self.user = UserTower(cfg)
        self.items = ItemTable(cfg)
        self.text = text
        # 1 for items seen in training: only those use their id embedding, the others
        # (and items added later) are scored by their text alone
        self.register_buffer("warm", torch.ones(cfg.n_items + 1))

    def item_table(
        self, live_rows: torch.Tensor | None = None, id_keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """float32 [n_items + 1, D], normalised, row 0 zeros."""
        features = self.text.features(live_rows) if self.text is not None else None
        return self.items(features, self.warm if id_keep is None else id_keep)

    def configure_optimizers(
        self, *, weight_decay: float, lr: float, betas: tuple[float, float], text_lr: float
    ) -> torch.optim.AdamW:
        """AdamW over the trainable parameters. Weights of two or more dimensions (linear
        layers, embeddings) decay by `weight_decay`; biases and norm scales do not. The
        text tower's fine-tuned layers learn at `text_lr`, the rest at `lr`; every group
        keeps its rate as ``base_lr``, which the schedule scales."""
        trainable = [(name, p) for name, p in self.named_parameters() if p.requires_grad]
        groups = []
        for text, rate in ((False, lr), (True, text_lr)):
            params = [p for name, p in trainable if name.startswith("text.") == text]
            for decay, chosen in ((weight_decay, [p for p in params if p.dim() >= 2]),
                                  (0.0, [p for p in params if p.dim() < 2])):
                if chosen:
                    groups.append({"params": chosen, "lr": rate, "base_lr": rate,
                                   "weight_decay": decay})
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
