"""What the item encoder sees of a catalog item (docs/contracts.md §4): one text recipe
and the default number of its tokens.

Streams embeds a new item by this recipe, training embeds (and fine-tunes on) every item
of its catalog by it, so a version's stored vectors and the vectors streams computes
for it agree. A version's manifest names the token limit it was embedded with
(``item_encoder.max_length``); :data:`MAX_TOKENS` is the limit where it names none: the
bootstrap model ``base`` and versions written before manifests carried it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from protos import events_pb2

# all-MiniLM-L6-v2 was trained on 256 word pieces; the bootstrap trainer always embedded
# at this limit, so it reproduces the versions that do not record theirs
MAX_TOKENS = 256
TEMPLATE = "{title}. {categories joined by ', '}. {description}"  # as the manifest words it


def text_of(title: str, categories: Iterable[str], description: str) -> str:
    """``"{title}. {categories}. {description}"``: every part stripped, categories joined
    by ``", "``, empty parts and their ``". "`` left out."""
    joined = ", ".join(c.strip() for c in categories if c.strip())
    parts = (title.strip(), joined, description.strip())
    return ". ".join(part for part in parts if part)


def item_text(item: events_pb2.Item) -> str:
    """The text of a catalog item (an untitled item's text has no title: never its id)."""
    return text_of(item.title, item.categories, item.description)


def text_hash(text: str) -> int:
    """A 64-bit hash of an item text (BLAKE2b, 8 bytes, little-endian): what a version
    keeps of the texts its item vectors were made from (``item_text_hashes.npy``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(),
                          "little")
