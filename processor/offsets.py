"""Per-partition offset tracking: release outcomes in offset order, commit only the contiguous acknowledged prefix."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from processor.inflight import InFlight

TopicPartition = tuple[str, int]


@dataclass(slots=True, eq=False)
class PartitionLog:
    """In-flight events of one owned partition, in consume (= offset) order.

    `waiting` holds events whose outcome is not decided or not yet released to the producer;
    `unacked` holds produced events, oldest first. An offset is committable only when it and every
    earlier consumed offset of the partition has been acknowledged by the broker.
    """

    waiting: deque[InFlight] = field(default_factory=deque)
    unacked: deque[InFlight] = field(default_factory=deque)
    next_commit: int | None = None  # offset + 1 of the last acknowledged contiguous event
    committed: int | None = None  # what we last sent to the group coordinator

    def __len__(self) -> int:
        return len(self.waiting) + len(self.unacked)


class OffsetTracker:
    """Consumer-thread only (no locks): admitted → outcome set → released → acked → committable."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, PartitionLog] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def assign(self, tp: TopicPartition) -> None:
        """Start tracking a newly assigned partition."""
        self._parts.setdefault(tp, PartitionLog())

    def revoke(self, tp: TopicPartition) -> list[InFlight]:
        """Forget a partition; returns its events that never got acknowledged (they will be redelivered)."""
        part = self._parts.pop(tp, None)
        if part is None:
            return []
        dropped = list(part.waiting) + [i for i in part.unacked if not i.acked]
        self._count -= len(part)
        return dropped

    def admit(self, item: InFlight) -> None:
        """Track a consumed event (offsets of a partition arrive in increasing order)."""
        part = self._parts.setdefault((item.topic, item.partition), PartitionLog())
        part.waiting.append(item)
        self._count += 1

    def releasable(self) -> Iterator[InFlight]:
        """Events whose outcome is set and whose partition predecessors are all released; produce these in order."""
        for part in self._parts.values():
            while part.waiting and part.waiting[0].outcome is not None:
                item = part.waiting.popleft()
                part.unacked.append(item)
                yield item

    def unrelease(self) -> int:
        """Put every released but unacknowledged event back at the head of its partition's queue, in order.

        Exactly-once: an aborted transaction's outputs are invisible, so its events are released again.
        Returns how many went back.
        """
        moved = 0
        for part in self._parts.values():
            while part.unacked and not part.unacked[-1].acked:
                part.waiting.appendleft(part.unacked.pop())
                moved += 1
        return moved

    def advance(self) -> None:
        """Pop acknowledged events off each partition's head, moving its commit point."""
        for part in self._parts.values():
            while part.unacked and part.unacked[0].acked:
                item = part.unacked.popleft()
                part.next_commit = item.offset + 1
                self._count -= 1

    def committable(self) -> dict[TopicPartition, int]:
        """Offsets (last acknowledged + 1) that moved since the last commit, owned partitions only."""
        self.advance()
        return {
            tp: p.next_commit
            for tp, p in self._parts.items()
            if p.next_commit is not None and p.next_commit != p.committed
        }

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Record what the coordinator now holds, so those offsets are not sent again."""
        for tp, offset in offsets.items():
            part = self._parts.get(tp)
            if part is not None:
                part.committed = offset

    def commit_failed(self, offsets: dict[TopicPartition, int]) -> None:
        """An asynchronous commit of `offsets` failed: forget it was sent, so the next commit sends it again.

        `mark_committed` runs when an async commit is sent, before the coordinator answers; without this a
        partition whose position then stops moving would never have that offset committed.

        Args:
            offsets: The offsets (last acknowledged + 1) whose commit the coordinator refused.
        """
        for tp, offset in offsets.items():
            part = self._parts.get(tp)
            if part is not None and part.committed == offset:  # a later commit already superseded it otherwise
                part.committed = None

    def pending(self, tps: set[TopicPartition] | None = None) -> int:
        """Events not yet acknowledged, in the given partitions (all when None)."""
        return sum(len(p) for tp, p in self._parts.items() if tps is None or tp in tps)
