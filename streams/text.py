"""The item text that gets embedded (a contract shared with training)."""

from __future__ import annotations

from protos import events_pb2


def item_text(item: events_pb2.Item) -> str:
    """``"{title}. {categories}. {description}"`` with empty parts and their ". " left out."""
    categories = ", ".join(c.strip() for c in item.categories if c.strip())
    parts = (item.title.strip(), categories, item.description.strip())
    return ". ".join(part for part in parts if part)
