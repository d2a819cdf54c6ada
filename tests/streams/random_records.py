"""Random records of the events topic (hypothesis strategies), and the documented reasons."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

from hypothesis import strategies as st

from protos import events_pb2
from streams.processing import Record
from streams.validation import KNOWN_EVENT_TYPES, MIN_TIMESTAMP_MS

NOW_MS = 1_790_000_000_000
ITEM_IDS = [f"i{k}" for k in range(5)]
USERS = ["u1", "u2", "u3"]
CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def documented_reasons() -> set[str]:
    """The reasons in the dead-letter table of docs/contracts.md."""
    section = CONTRACTS.read_text().split("### Dead-letter reasons", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` +\|", section, flags=re.MULTILINE))


REASONS = documented_reasons()


def events(now_ms: int, item_ids: list[str]) -> st.SearchStrategy[events_pb2.Event]:
    """Events with random fields: empty ids, unknown types and items, times from far past to
    far future, NaN and infinite values, large maps."""
    return st.builds(
        events_pb2.Event,
        event_id=st.one_of(st.sampled_from(["", "e1", "e2", "e3"]), st.text(max_size=30)),
        user_id=st.one_of(st.sampled_from(["", *USERS]), st.text(max_size=20)),
        item_id=st.one_of(st.sampled_from(["", *item_ids, "unknown"]), st.text(max_size=20)),
        type=st.one_of(st.sampled_from(sorted(KNOWN_EVENT_TYPES)),
                       st.integers(-(2**31), 2**31 - 1)),
        timestamp_ms=st.one_of(
            st.integers(now_ms - 10**10, now_ms + 600_000),  # around now, some too far ahead
            st.sampled_from([0, MIN_TIMESTAMP_MS - 1, MIN_TIMESTAMP_MS]),
            st.integers(-(2**63), 2**63 - 1),
        ),
        value=st.floats(allow_nan=True, allow_infinity=True),
        session_id=st.one_of(st.none(), st.text(max_size=10)),
        context=st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3),
        properties=st.dictionaries(st.text(max_size=5), st.text(max_size=3000), max_size=2),
    )


def payloads(
    now_ms: int, item_ids: list[str], max_bytes: int
) -> st.SearchStrategy[tuple[bytes | None, bytes]]:
    """(key, value) of one record: a random Event keyed by its user or by anything, random
    bytes, or a payload over `max_bytes`."""
    any_event = events(now_ms, item_ids)
    return st.one_of(
        any_event.map(lambda e: (e.user_id.encode(), e.SerializeToString())),
        st.tuples(st.one_of(st.none(), st.sampled_from([b"u1", b"x"]), st.binary(max_size=8)),
                  any_event.map(lambda e: e.SerializeToString())),
        st.tuples(st.sampled_from([b"u1", None]), st.binary(max_size=300)),
        st.tuples(st.just(b"u1"),
                  st.integers(max_bytes + 1, max_bytes * 2).map(lambda n: b"\x0a" * n)),
    )


@st.composite
def records(draw: st.DrawFn, max_size: int, max_bytes: int) -> list[Record]:
    """A batch as one worker takes it: increasing offsets per partition, some records
    repeated byte for byte (the same event sent twice)."""
    pairs = draw(st.lists(payloads(NOW_MS, ITEM_IDS, max_bytes), min_size=1, max_size=max_size))
    repeats = draw(st.lists(st.integers(0, len(pairs) - 1), max_size=10))
    pairs += [pairs[k] for k in repeats]
    batch, offsets = [], {0: 0, 1: 0}
    for key, value in pairs:
        # As Kafka places them: by key, so one user's records share a partition.
        partition = zlib.crc32(key) % 2 if key is not None else draw(st.sampled_from([0, 1]))
        batch.append(Record("events", partition, offsets[partition], key, value))
        offsets[partition] += 1
    return batch
