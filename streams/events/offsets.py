"""Where each assigned partition of ``events`` stands: the offset below which every record
is handled, and the next offset to commit with the partition's open transaction."""

from __future__ import annotations


class PartitionOffsets:
    """Per partition of ``events``: ``handled`` (below it, a record's outputs are
    committed or in the open transaction, or it lies below the offset reading resumed at)
    and the next offset to commit (records processed since the last commit)."""

    def __init__(self) -> None:
        self._next: dict[int, int] = {}
        self._handled: dict[int, int] = {}  # partition -> next offset after the last one sent

    def start_at(self, partition: int, offset: int) -> None:
        """The partition was just assigned and is read from `offset` (its committed offset):
        records below it were handled, whatever a fetch made before the seek returns."""
        self._handled[partition] = offset

    def processed(self, partition: int, offset: int) -> None:
        """The record at `offset` of `partition` has its outputs in the open transaction."""
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)
        self._handled[partition] = max(self._handled.get(partition, 0), offset + 1)

    def handled(self, partition: int, offset: int) -> bool:
        """Whether the outputs of that record were sent already (by this worker, committed
        or in the open transaction, or below the offset the partition was assigned at). A
        consumer can return such a record again: fetched before a seek, or once more after
        a rebalance kept the partition here; it must not be handled twice."""
        return offset < self._handled.get(partition, 0)

    def pending(self) -> bool:
        """Whether some partition has records processed since its last commit."""
        return bool(self._next)

    def take(self) -> dict[int, int]:
        """The next offset to commit of each partition with processed records; from now
        on, none has."""
        pending, self._next = self._next, {}
        return pending

    def closed(self, partition: int) -> None:
        """The partition's producer stopped: what it did not commit is the next owner's."""
        self._next.pop(partition, None)

    def lost(self, partition: int) -> None:
        """The partition's producer was fenced: its open transaction is lost, so what was
        sent in it counts as handled no more."""
        self._handled.pop(partition, None)
