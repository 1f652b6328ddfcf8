"""Offset tracker: outputs leave in offset order; only the contiguous acknowledged prefix is committed."""

from __future__ import annotations

from processor.inflight import InFlight, Outcome
from processor.offsets import OffsetTracker

TP = ("images", 0)
OTHER = ("images", 1)


def _admit(tracker: OffsetTracker, offsets: list[int], tp: tuple[str, int] = TP) -> dict[int, InFlight]:
    items = {}
    for offset in offsets:
        item = InFlight(topic=tp[0], partition=tp[1], offset=offset, key=None, value=b"v", headers=None,
                        timestamp_ms=None)  # fmt: skip
        tracker.admit(item)
        items[offset] = item
    return items


def _decide(item: InFlight) -> None:
    item.outcome = Outcome(topic="out", value=b"r", headers=[])


def _release(tracker: OffsetTracker) -> list[tuple[int, int]]:
    return [(item.partition, item.offset) for item in tracker.releasable()]


def _ack(*items: InFlight) -> None:
    for item in items:
        item.acked = True


def test_outputs_are_released_strictly_in_offset_order_even_when_later_ones_finish_first() -> None:
    tracker = OffsetTracker()
    items = _admit(tracker, [0, 1, 2, 3])
    _decide(items[2])
    _decide(items[3])
    assert _release(tracker) == []  # 0 is not decided: nothing after it may be produced
    _decide(items[1])
    assert _release(tracker) == []
    _decide(items[0])
    assert _release(tracker) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert _release(tracker) == []  # each event is released once


def test_partitions_release_independently() -> None:
    tracker = OffsetTracker()
    p0 = _admit(tracker, [0, 1])
    p1 = _admit(tracker, [0, 1], OTHER)
    _decide(p0[1])
    _decide(p1[0])
    assert _release(tracker) == [(1, 0)]  # partition 1's head is decided; partition 0's is not


def test_out_of_order_acks_commit_only_the_contiguous_prefix() -> None:
    tracker = OffsetTracker()
    items = _admit(tracker, [10, 11, 12, 13])
    for item in items.values():
        _decide(item)
    _release(tracker)
    _ack(items[11], items[13])
    assert tracker.committable() == {}  # 10 unacknowledged: nothing may be committed
    _ack(items[10])
    assert tracker.committable() == {TP: 12}  # 10, 11 done; 12 missing → next offset to read is 12
    _ack(items[12])
    assert tracker.committable() == {TP: 14}
    assert len(tracker) == 0


def test_committable_lists_only_partitions_that_moved_since_the_last_commit() -> None:
    tracker = OffsetTracker()
    p0 = _admit(tracker, [0])
    p1 = _admit(tracker, [0], OTHER)
    for item in (p0[0], p1[0]):
        _decide(item)
    _release(tracker)
    _ack(p0[0], p1[0])
    offsets = tracker.committable()
    assert offsets == {TP: 1, OTHER: 1}
    tracker.mark_committed(offsets)
    assert tracker.committable() == {}
    more = _admit(tracker, [1], OTHER)
    _decide(more[1])
    _release(tracker)
    _ack(more[1])
    assert tracker.committable() == {OTHER: 2}


def test_gaps_in_offsets_from_compaction_do_not_block_commits() -> None:
    tracker = OffsetTracker()
    items = _admit(tracker, [3, 7, 20])  # compacted topic: offsets 4-6 and 8-19 no longer exist
    for item in items.values():
        _decide(item)
    assert _release(tracker) == [(0, 3), (0, 7), (0, 20)]
    _ack(items[3], items[7])
    assert tracker.committable() == {TP: 8}
    _ack(items[20])
    assert tracker.committable() == {TP: 21}


def test_revoke_drops_the_partition_and_returns_its_unacknowledged_events() -> None:
    tracker = OffsetTracker()
    items = _admit(tracker, [0, 1, 2, 3])
    other = _admit(tracker, [0], OTHER)
    for offset in (0, 1, 2):
        _decide(items[offset])
    _release(tracker)
    _ack(items[0], items[2])  # 0 acked (prefix), 2 acked out of order, 1 and 3 not
    dropped = tracker.revoke(TP)
    assert sorted(item.offset for item in dropped) == [1, 3]
    assert tracker.revoke(TP) == []  # already gone
    assert tracker.committable() == {}  # nothing for a partition we no longer own
    assert len(tracker) == 1 and tracker.pending() == 1
    assert other[0] in tracker.revoke(OTHER)


def test_revoking_an_unknown_partition_returns_nothing() -> None:
    assert OffsetTracker().revoke(("nope", 9)) == []


def test_pending_counts_unacknowledged_events_per_partition() -> None:
    tracker = OffsetTracker()
    items = _admit(tracker, [0, 1])
    _admit(tracker, [0, 1, 2], OTHER)
    assert tracker.pending() == 5
    assert tracker.pending({TP}) == 2
    _decide(items[0])
    _release(tracker)
    _ack(items[0])
    tracker.advance()
    assert tracker.pending({TP}) == 1 and len(tracker) == 4


def test_assigned_partition_with_no_events_commits_nothing() -> None:
    tracker = OffsetTracker()
    tracker.assign(TP)
    assert tracker.committable() == {} and tracker.pending({TP}) == 0


def test_failed_async_commit_is_resent_with_the_next_commit_even_when_the_offset_did_not_move() -> None:
    tracker = OffsetTracker()
    items = _admit(tracker, [0, 1])
    _decide(items[0])
    _decide(items[1])
    _release(tracker)
    _ack(items[0], items[1])
    assert tracker.committable() == {TP: 2}
    tracker.mark_committed({TP: 2})  # sent asynchronously, marked at once
    assert tracker.committable() == {}
    tracker.commit_failed({TP: 2})  # the coordinator refused it
    assert tracker.committable() == {TP: 2}  # resent although the position did not move


def test_a_failed_commit_superseded_by_a_later_one_is_not_resent() -> None:
    tracker = OffsetTracker()
    items = _admit(tracker, [0, 1])
    _decide(items[0])
    _decide(items[1])
    _release(tracker)
    _ack(items[0])
    tracker.mark_committed(tracker.committable())  # offset 1 sent
    _ack(items[1])
    tracker.mark_committed(tracker.committable())  # offset 2 sent
    tracker.commit_failed({TP: 1})  # the older one's failure arrives late
    assert tracker.committable() == {}
    tracker.commit_failed({OTHER: 5})  # a partition we do not own: ignored
    assert tracker.committable() == {}


def test_an_aborted_transactions_events_are_released_again_in_offset_order() -> None:
    tracker = OffsetTracker()
    items = _admit(tracker, [0, 1, 2])
    other = _admit(tracker, [0], OTHER)
    for item in [*items.values(), *other.values()]:
        _decide(item)
    assert len(_release(tracker)) == 4  # one transaction's worth
    assert tracker.unrelease() == 4  # aborted: nothing of it is visible
    assert sorted(_release(tracker)) == [(0, 0), (0, 1), (0, 2), (1, 0)]  # the same events, same order
    _ack(*items.values(), *other.values())
    assert tracker.committable() == {TP: 3, OTHER: 1}
