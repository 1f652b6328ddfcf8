"""Micro-batcher: flush on size or on the oldest image's wait, FIFO, events never split, close() wakes waiters."""

from __future__ import annotations

import threading
import time

import numpy as np

from processor.batcher import MicroBatcher
from processor.inflight import InFlight

SHAPE = (3, 2, 2)
LONG_WAIT_S = 30.0  # longer than any test runs: a batch returned before it was due by size is a bug


def _item(offset: int, crops: int = 1) -> InFlight:
    item = InFlight(topic="t", partition=0, offset=offset, key=None, value=b"", headers=None, timestamp_ms=None)
    # Each crop row is filled with its event's offset, so the stacked tensor shows whose rows are where.
    item.crops = np.full((crops, *SHAPE), float(offset), dtype=np.float32)
    return item


def test_full_batch_is_returned_immediately() -> None:
    batcher = MicroBatcher(4, LONG_WAIT_S, SHAPE)
    for i in range(4):
        batcher.put(_item(i))
    batch = batcher.next_batch(timeout_s=LONG_WAIT_S)  # returns at once: waiting the full wait would fail the run
    assert batch is not None
    assert [it.offset for it in batch.items] == [0, 1, 2, 3]
    assert batch.tensor.shape == (4, *SHAPE)


def test_partial_batch_waits_for_max_wait_then_goes_out() -> None:
    max_wait_s = 0.5
    batcher = MicroBatcher(8, max_wait_s, SHAPE)
    put_at = time.monotonic()
    batcher.put(_item(7))
    assert batcher.next_batch(timeout_s=0.01) is None  # not due yet: neither full nor old enough
    batch = batcher.next_batch(timeout_s=LONG_WAIT_S)
    assert batch is not None and [it.offset for it in batch.items] == [7]
    assert time.monotonic() - put_at >= max_wait_s  # it was held for max_wait, not handed out early


def test_next_batch_times_out_with_none_when_empty() -> None:
    assert MicroBatcher(4, 0.0, SHAPE).next_batch(timeout_s=0.01) is None


def test_order_is_fifo_across_batches_and_rows_match_items() -> None:
    batcher = MicroBatcher(3, LONG_WAIT_S, SHAPE, capacity_rows=9)
    for i in range(9):
        batcher.put(_item(i))
    seen: list[int] = []
    for _ in range(3):
        batch = batcher.next_batch(timeout_s=LONG_WAIT_S)
        assert batch is not None
        for item, rows in zip(batch.items, batch.rows, strict=True):
            assert (batch.tensor[rows] == item.offset).all()
        seen += [it.offset for it in batch.items]
    assert seen == list(range(9))


def test_an_event_is_never_split_across_batches() -> None:
    batcher = MicroBatcher(4, 0.0, SHAPE)
    batcher.put(_item(0, crops=3))
    batcher.put(_item(1, crops=2))  # 3 + 2 > 4: must go in the next batch whole
    first = batcher.next_batch(timeout_s=1.0)
    second = batcher.next_batch(timeout_s=1.0)
    assert first is not None and second is not None
    assert [it.offset for it in first.items] == [0] and first.tensor.shape[0] == 3
    assert [it.offset for it in second.items] == [1] and second.tensor.shape[0] == 2
    assert (second.tensor == 1.0).all()


def test_rows_of_multi_crop_events_are_contiguous_slices() -> None:
    batcher = MicroBatcher(8, 0.0, SHAPE)
    for offset, crops in ((0, 2), (1, 1), (2, 3)):
        batcher.put(_item(offset, crops))
    batch = batcher.next_batch(timeout_s=1.0)
    assert batch is not None
    assert batch.rows == [slice(0, 2), slice(2, 3), slice(3, 6)]
    assert batch.tensor[:, 0, 0, 0].tolist() == [0, 0, 1, 2, 2, 2]


def test_lone_event_with_more_crops_than_max_batch_size_still_goes_out() -> None:
    batcher = MicroBatcher(2, LONG_WAIT_S, SHAPE, capacity_rows=6)
    batcher.put(_item(5, crops=5))
    batcher.put(_item(6))
    batch = batcher.next_batch(timeout_s=LONG_WAIT_S)
    assert batch is not None and [it.offset for it in batch.items] == [5]
    assert batch.tensor.shape == (5, *SHAPE) and (batch.tensor == 5.0).all()
    assert len(batcher) == 1


def test_close_releases_a_blocked_waiter() -> None:
    batcher = MicroBatcher(4, LONG_WAIT_S, SHAPE)
    results: list[object] = []
    waiter = threading.Thread(target=lambda: results.append(batcher.next_batch(timeout_s=LONG_WAIT_S)))
    waiter.start()
    batcher.close()
    waiter.join(timeout=10.0)
    assert not waiter.is_alive()
    assert results == [None]


def test_close_hands_out_what_is_left_without_waiting() -> None:
    batcher = MicroBatcher(4, LONG_WAIT_S, SHAPE)
    batcher.put(_item(1))
    batcher.put(_item(2))
    batcher.close()
    batch = batcher.next_batch(timeout_s=LONG_WAIT_S)
    assert batch is not None and [it.offset for it in batch.items] == [1, 2]
    assert batcher.next_batch(timeout_s=LONG_WAIT_S) is None


def test_put_blocks_decode_workers_while_the_ready_queue_is_full_and_resumes_after_a_take() -> None:
    import threading

    batcher = MicroBatcher(2, 0.0, SHAPE, capacity_rows=2)
    batcher.put(_item(0))
    batcher.put(_item(1))
    third_in = threading.Event()
    worker = threading.Thread(target=lambda: (batcher.put(_item(2)), third_in.set()), daemon=True)
    worker.start()
    assert not third_in.wait(0.2), "a third put must wait while 2 rows are ready"
    first = batcher.next_batch(timeout_s=1.0)
    assert first is not None and [i.offset for i in first.items] == [0, 1]
    assert third_in.wait(2.0), "taking a batch makes room"
    second = batcher.next_batch(timeout_s=1.0)
    assert second is not None and [i.offset for i in second.items] == [2]


def test_the_batcher_asks_its_policy_when_a_batch_is_due() -> None:
    # Triton's rule through the real batcher: 3 ready rows form the preferred size 2 at once, no waiting.
    batcher = MicroBatcher(8, LONG_WAIT_S, SHAPE, policy="triton")
    for i in range(3):
        batcher.put(_item(i))
    batch = batcher.next_batch(timeout_s=LONG_WAIT_S)
    assert batch is not None and [it.offset for it in batch.items] == [0, 1]
    assert len(batcher) == 1
