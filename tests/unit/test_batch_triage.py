"""The batcher under ours (slo): a lost partition head waits when batching it in order would make others late."""

from __future__ import annotations

import time

import numpy as np

from processor.batcher import MicroBatcher
from processor.inflight import InFlight
from processor.slo import ScoredBatch, SloController

TARGET_S = 0.1
# Measured inference: 30 ms for one row, 60 ms for four (a = 10 ms per row, b = 20 ms per batch). A ready event
# is lost past 50 ms (80 % of the target minus a lone row), and the law's batches hold at most 2 rows.
COSTS = ((1, 0.03), (4, 0.06))
LOST_S = 0.2


def _batcher(policy: str = "slo", defer_lost: bool = True, counted: list[float] | None = None) -> MicroBatcher:
    slo = SloController(TARGET_S, max_batch_size=4, max_wait_s=0.0)
    on_deferred = counted.append if counted is not None else None
    batcher = MicroBatcher(4, 0.0, (3, 2, 2), slo=slo, policy=policy, defer_lost=defer_lost, on_deferred=on_deferred)
    for rows, seconds in COSTS:
        batcher.policy.observe(ScoredBatch(rows, seconds))
    return batcher


def _put(batcher: MicroBatcher, partition: int, offset: int, age_s: float) -> None:
    """A decoded one-row event of `partition` whose Kafka timestamp is `age_s` old."""
    item = InFlight("in", partition, offset, None, b"", None, int((time.time() - age_s) * 1000))
    item.crops = np.zeros((1, 3, 2, 2), dtype=np.float32)
    batcher.put(item)


def _batches(batcher: MicroBatcher) -> list[list[tuple[int, int]]]:
    return [[(i.partition, i.offset) for i in b.items] for b in iter(lambda: batcher.next_batch(timeout_s=0.0), None)]


def _lost_head_that_would_make_the_next_partition_late(batcher: MicroBatcher) -> None:
    _put(batcher, 0, 0, age_s=LOST_S)  # misses the target even scored alone now
    _put(batcher, 0, 1, age_s=0.03)  # behind it in its partition: produced after it, late with it
    # 30 ms old: alone it lands at 60 ms; behind partition 0's two rows (two 2-row batches), at 100 ms.
    _put(batcher, 1, 0, age_s=0.03)
    _put(batcher, 1, 1, age_s=0.03)


def test_a_lost_partition_waits_when_batching_it_first_would_make_a_partition_that_can_still_make_it_late() -> None:
    counted: list[float] = []
    batcher = _batcher(counted=counted)
    _lost_head_that_would_make_the_next_partition_late(batcher)
    # Partition 0 goes once no live rows are ready: it waits, it is never dropped.
    assert _batches(batcher) == [[(1, 0), (1, 1)], [(0, 0), (0, 1)]]
    assert sum(counted) == 2  # deepfake_batch_deferred counts the events taken ahead


def test_a_lost_head_keeps_its_place_when_the_events_behind_it_still_make_the_target() -> None:
    counted: list[float] = []
    batcher = _batcher(counted=counted)
    _put(batcher, 0, 0, age_s=LOST_S)
    _put(batcher, 1, 0, age_s=0.0)  # behind one row, in one batch: lands at 40 ms
    assert _batches(batcher) == [[(0, 0), (1, 0)]]
    assert counted == []


def test_with_triage_off_or_another_policy_batches_keep_the_order_events_were_decoded_in() -> None:
    counted: list[float] = []
    for batcher in (
        _batcher(defer_lost=False, counted=counted),
        _batcher(policy="fixed", counted=counted),
        _batcher(policy="aimd", counted=counted),
    ):
        _lost_head_that_would_make_the_next_partition_late(batcher)
        taken = [event for batch in _batches(batcher) for event in batch]
        assert taken == [(0, 0), (0, 1), (1, 0), (1, 1)], batcher.policy.name
        assert counted == []


def test_when_every_partition_is_lost_the_oldest_goes_first() -> None:
    counted: list[float] = []
    batcher = _batcher(counted=counted)
    _put(batcher, 0, 0, age_s=LOST_S + 0.05)
    _put(batcher, 1, 0, age_s=LOST_S)
    _put(batcher, 0, 1, age_s=LOST_S)
    assert [event for batch in _batches(batcher) for event in batch] == [(0, 0), (1, 0), (0, 1)]
    assert counted == []
