"""Users waiting for item vectors: their history names items without a vector of the
version in use, so their user vector leaves those items out, or is missing when none
of their items has one (events that came before the catalog was embedded).

:class:`WaitingUsers` holds them by item; when vectors appear, :meth:`WaitingUsers.take`
gives the users to embed again. It is fed by every user-vector computation (a batch of
events, a re-embedding) and rebuilt from the user states of a partition when it is
assigned. It keeps at most ``max_users`` users; past that it only marks itself
``overflowed``, and the worker re-embeds all its users at the next arrival, which fills
it again from scratch.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

from streams.history import Interaction

UserKey = tuple[int, str]  # (partition of events, user id)
NONE: frozenset[str] = frozenset()


def missing_items(history: Iterable[Interaction], vectors: Container[str]) -> frozenset[str]:
    """Items of the history without a vector (runs for every user of every batch: a list
    comprehension and no set when nothing is missing, a few microseconds)."""
    missing = [i.item_id for i in history if i.item_id not in vectors]
    return frozenset(missing) if missing else NONE


class WaitingUsers:
    """Partition -> user -> the items they wait for, and item -> the users waiting."""

    def __init__(self, *, max_users: int) -> None:
        self.max_users = max_users
        self.overflowed = False
        self._users: dict[int, dict[str, frozenset[str]]] = {}
        self._by_item: dict[str, set[UserKey]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def waits_for(self, user: UserKey) -> frozenset[str]:
        partition, user_id = user
        return self._users.get(partition, {}).get(user_id, frozenset())

    def note(self, user: UserKey, missing: frozenset[str]) -> None:
        """The user's vector was just computed without `missing` (empty: it is complete)."""
        partition, user_id = user
        users = self._users.setdefault(partition, {})
        before = users.get(user_id)
        if before == missing or (before is None and not missing):
            return
        if before is None and self._count >= self.max_users:
            self.overflowed = True
            return
        if before is not None:
            self._unlink(user, before)
        if missing:
            users[user_id] = missing
            for item_id in missing:
                self._by_item.setdefault(item_id, set()).add(user)
            self._count += before is None
        else:
            del users[user_id]
            self._count -= 1

    def take(self, arrived: Iterable[str]) -> set[UserKey]:
        """The users waiting for any of the items that got a vector; they are forgotten
        (embedding them again notes what they still wait for)."""
        users: set[UserKey] = set()
        for item_id in arrived:
            users |= self._by_item.get(item_id, set())
        for user in users:
            partition, user_id = user
            self._unlink(user, self._users[partition].pop(user_id))
            self._count -= 1
        return users

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget the users of partitions this worker no longer owns."""
        for partition in partitions:
            for user_id, missing in self._users.pop(partition, {}).items():
                self._unlink((partition, user_id), missing)
                self._count -= 1

    def forget(self, user: UserKey) -> None:
        """Forget one user (deleted)."""
        partition, user_id = user
        missing = self._users.get(partition, {}).pop(user_id, None)
        if missing is not None:
            self._unlink(user, missing)
            self._count -= 1

    def clear(self) -> None:
        self._users, self._by_item, self._count, self.overflowed = {}, {}, 0, False

    def _unlink(self, user: UserKey, items: Iterable[str]) -> None:
        for item_id in items:
            waiting = self._by_item.get(item_id)
            if waiting is not None:
                waiting.discard(user)
                if not waiting:
                    del self._by_item[item_id]
