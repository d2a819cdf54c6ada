"""What the events handler needs from the rest of the worker, as Protocols: the worker
passes the real ones (the catalog, the changelog-backed stores, the Redis writer, the
live model), a unit test can pass its own and drive whole batches without Kafka or
Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from protos import events_pb2
from streams.deletion import Removed
from streams.history import UserState
from streams.online import Touch, UserVector
from streams.seen import Change, Hashes, SeenIds
from streams.userencoder import UserEncoder


class Items(Protocol):
    """The catalog: items to join events with, vectors of the version in use."""

    def item(self, item_id: str) -> events_pb2.Item | None: ...

    def vectors(self) -> Mapping[str, np.ndarray]: ...

    def take_arrived(self) -> set[str]:
        """Items that got their first vector since the last call."""
        ...


class UserStates(Protocol):
    """User states of the assigned partitions; ``topic`` is their changelog."""

    topic: str

    def __len__(self) -> int: ...

    def get(self, partition: int, user_id: str) -> UserState: ...

    def put(self, partition: int, user_id: str, state: UserState) -> bytes:
        """Keep the new state; returns its changelog record's value."""
        ...

    def delete(self, partition: int, user_id: str) -> bool:
        """Forget a deleted user; whether a state was held."""
        ...

    def users(self) -> Iterator[tuple[int, str]]: ...

    def holds(self, partition: int, user_id: str) -> bool:
        """Whether a state of the user is held (its partition assigned here)."""
        ...


class DedupeWindows(Protocol):
    """Event ids of each assigned partition's dedupe window; ``topic`` is their changelog."""

    topic: str

    def of(self, partition: int) -> SeenIds: ...

    def add(self, partition: int, hashes: Hashes, times_ms: npt.ArrayLike) -> list[Change]:
        """Remember ids accepted in `partition`; returns its changelog records."""
        ...


class OnlineStore(Protocol):
    """The online state serving reads (Redis): a batch's effects, applied once per record."""

    async def write(self, touches: Sequence[Touch], vectors: Sequence[UserVector]) -> int: ...

    async def vector_marks(self, user_ids: Sequence[str]) -> list[tuple[str, int] | None]:
        """(version, newest event ms) of each user's vector, None where there is none."""
        ...

    async def delete_user(self, user_id: str, *, partition: int, offset: int) -> Removed:
        """Remove the user once for the control record at `offset` (streams.deletion)."""
        ...

    async def forget_receipts(self, committed: Mapping[int, int]) -> int: ...


class Model(Protocol):
    """The parts of a loaded version the events path uses."""

    @property
    def version(self) -> str: ...

    @property
    def user_encoder(self) -> UserEncoder: ...


class Models(Protocol):
    """The version in use; ``lock`` is held by each batch and each chunk of re-embedding."""

    lock: asyncio.Lock

    @property
    def current(self) -> Model: ...

    @property
    def version(self) -> str: ...


class Clock(Protocol):
    def __call__(self) -> int:
        """Wall-clock time in milliseconds."""
        ...


class Consumed(Protocol):
    """A record read from events (aiokafka's ``ConsumerRecord``); ``timestamp`` is the
    record's, in milliseconds (its produce time)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def timestamp(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...
