"""Users whose vector lags their state: the deferred path of user vectors.

With a trained user tower a vector costs a network pass over the user's newest events,
milliseconds where the weighted mean costs microseconds. Run inside a batch, that pass
holds up the batch's online write (the seen set, history, counters serving filters
with) and, under load, every batch behind it. Deferred (``user_vectors`` setting), a
batch writes its events' online state at once and notes its users here; a loop of its
own (:meth:`streams.events.handler.EventsHandler.embed_pending`) takes the users noted
since its last pass, in the order they were first noted, and embeds them in one encoder
call: a user who acted ten times meanwhile costs one pass, not ten.

Nothing here needs to survive a crash: a restored user whose vector in Redis is older
than its state (``ts`` below the state's newest event) is embedded again when its
partition is assigned (:meth:`streams.events.handler.EventsHandler.note_waiting`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable
from typing import Literal

from streams.waiting import UserKey

# How a batch's user vectors are made (the ``user_vectors`` setting): with the batch
# ("inline"), by the passes here ("deferred"), or "auto": deferred when the version's
# user encoder is heavy (a trained tower), inline for the weighted mean.
VectorMode = Literal["auto", "inline", "deferred"]


class PendingUsers:
    """User -> when it was first noted (monotonic seconds) since its last vector."""

    def __init__(self) -> None:
        self._noted: dict[UserKey, float] = {}
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._noted)

    def __contains__(self, user: object) -> bool:
        return user in self._noted

    def note(self, users: Iterable[UserKey]) -> None:
        """`users` changed; a user noted before keeps its place and its first time."""
        now = time.monotonic()
        for user in users:
            self._noted.setdefault(user, now)
        if self._noted:
            self._wake.set()

    def forget(self, user: UserKey) -> None:
        self._noted.pop(user, None)

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        for user in [user for user in self._noted if user[0] in gone]:
            del self._noted[user]

    async def take(self, most: int, *, within_s: float = 0.0) -> dict[UserKey, float]:
        """The `most` users noted first, with their times, once there is one; waits up
        to `within_s` after the first for others to join the same pass."""
        while not self._noted:
            self._wake.clear()
            await self._wake.wait()
        if within_s > 0 and len(self._noted) < most:
            await asyncio.sleep(within_s)
        taken: dict[UserKey, float] = {}
        for user in list(itertools.islice(self._noted, most)):
            taken[user] = self._noted.pop(user)
        return taken
