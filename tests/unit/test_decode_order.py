"""The order free decode workers take queued events in: consume order, or (ours) lost partitions last."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from processor.batcher import MicroBatcher
from processor.decode import DecodePool
from processor.decode_order import REVIVE_AT, DecodeOrder
from processor.inflight import InFlight
from processor.scorer import Scorer
from processor.slo import ADJUST_EVERY, SloController
from processor.telemetry.metrics import Metrics

TARGET_S = 0.1
AFTER_DECODE_S = 0.03  # what decode, the batcher and inference take after a head starts decode
DECODE_INTERVAL_S = 0.02  # measured between pops while events wait: each event decoded first delays the rest


def _order(on_deferred: Callable[[], None] | None = None) -> DecodeOrder:
    order = DecodeOrder(TARGET_S, on_deferred, remaining_s=lambda: AFTER_DECODE_S)
    order.pop_interval_s = DECODE_INTERVAL_S
    return order


def _event(partition: int, offset: int, age_s: float) -> InFlight:
    """An event of `partition` whose Kafka timestamp is `age_s` old."""
    return InFlight("in", partition, offset, None, b"", None, int((time.time() - age_s) * 1000))


def _drain(order: DecodeOrder) -> list[tuple[int, int]]:
    taken: list[tuple[int, int]] = []
    while (item := order.pop()) is not None:
        taken.append((item.partition, item.offset))
    return taken


def test_without_a_target_workers_take_events_in_consume_order_across_partitions() -> None:
    counted: list[int] = []
    order = DecodeOrder(None, lambda: counted.append(1))
    for partition, offset, age in [(0, 0, 5.0), (1, 0, 0.0), (0, 1, 0.0), (2, 0, 9.0)]:
        order.push(_event(partition, offset, age))
    assert _drain(order) == [(0, 0), (1, 0), (0, 1), (2, 0)]
    assert counted == []


def test_a_lost_partition_waits_when_decoding_it_first_would_make_a_partition_that_can_still_make_it_late() -> None:
    counted: list[int] = []
    order = _order(on_deferred=lambda: counted.append(1))
    order.push(_event(0, 0, age_s=TARGET_S - AFTER_DECODE_S + 0.01))  # decoded now, it would still land late
    order.push(_event(0, 1, age_s=0.0))  # behind it in its partition: produced after it, so it waits too
    # 50 ms old: decoded now it lands at 80 ms; after partition 0's two events (2 × 20 ms), at 120 ms.
    order.push(_event(1, 0, age_s=0.05))
    order.push(_event(1, 1, age_s=0.05))
    assert _drain(order) == [(1, 0), (1, 1), (0, 0), (0, 1)]
    assert len(counted) == 2  # deepfake_decode_deferred counts them


def test_a_lost_head_keeps_its_place_when_consume_order_still_lands_the_other_partitions_in_time() -> None:
    """Near capacity the queue drains by itself: deferring here would only add the lost lane's followers to the late."""
    counted: list[int] = []
    order = _order(on_deferred=lambda: counted.append(1))
    order.push(_event(0, 0, age_s=TARGET_S - AFTER_DECODE_S + 0.01))
    order.push(_event(0, 1, age_s=0.0))
    order.push(_event(1, 0, age_s=0.0))  # after partition 0's two events it lands at 70 ms
    assert _drain(order) == [(0, 0), (0, 1), (1, 0)]
    assert counted == []


def test_the_decode_interval_is_measured_between_pops_while_events_wait_not_across_idle_time() -> None:
    order = DecodeOrder(TARGET_S)
    for offset in range(3):
        order.push(_event(0, offset, age_s=0.0))
    order.pop()
    time.sleep(0.01)
    order.pop()  # one event still waited: the 10 ms counts
    assert order.pop_interval_s >= 0.01
    order.pop()  # the last one (it waited too); the queue is empty now
    measured = order.pop_interval_s
    time.sleep(0.05)
    order.push(_event(0, 3, age_s=0.0))
    order.pop()  # nothing waited during the 50 ms: idle, not decode time
    assert order.pop_interval_s == measured


def test_within_a_partition_events_are_always_taken_in_offset_order() -> None:
    order = _order()
    order.push(_event(0, 0, age_s=1.0))
    order.push(_event(0, 1, age_s=0.0))
    order.push(_event(0, 2, age_s=0.0))
    assert _drain(order) == [(0, 0), (0, 1), (0, 2)]


def test_a_head_that_can_still_make_it_keeps_its_place_in_consume_order() -> None:
    counted: list[int] = []
    order = _order(on_deferred=lambda: counted.append(1))
    order.push(_event(0, 0, age_s=TARGET_S - AFTER_DECODE_S - 0.01))  # late, but decoded now it lands in time
    order.push(_event(1, 0, age_s=0.0))
    assert _drain(order) == [(0, 0), (1, 0)]
    assert counted == []


def test_until_the_time_after_decode_is_measured_only_a_head_past_the_target_is_lost() -> None:
    order = DecodeOrder(TARGET_S)  # remaining time unknown: taken as 0
    order.pop_interval_s = 1.0  # consume order would make partition 2 late
    order.push(_event(0, 0, age_s=0.9 * TARGET_S))
    order.push(_event(1, 0, age_s=1.1 * TARGET_S))
    order.push(_event(2, 0, age_s=0.0))
    assert _drain(order) == [(0, 0), (2, 0), (1, 0)]


def test_once_every_head_is_lost_it_is_consume_order_again() -> None:
    order = _order()
    order.push(_event(0, 0, age_s=2 * TARGET_S))
    order.push(_event(1, 0, age_s=TARGET_S))
    assert _drain(order) == [(0, 0), (1, 0)]


def test_a_head_lost_for_long_goes_back_in_line_so_no_partition_waits_for_ever() -> None:
    order = _order()
    order.push(_event(0, 0, age_s=REVIVE_AT * TARGET_S + 0.1))
    order.push(_event(1, 0, age_s=0.0))
    assert _drain(order) == [(0, 0), (1, 0)]


def test_the_pool_takes_events_in_the_order_it_was_given() -> None:
    order = _order()
    pool = DecodePool(None, 1, print, print, order)  # type: ignore[arg-type]
    try:
        assert pool.order is order  # not a fresh FIFO one: an empty order has length 0
    finally:
        pool.shutdown()


def test_the_pool_decodes_every_submitted_event_exactly_once() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.seen: list[int] = []
            self.lock = threading.Lock()

        def decode(self, item: InFlight) -> None:
            with self.lock:
                self.seen.append(item.offset)

    recorder = Recorder()
    decoded: list[InFlight] = []
    pool = DecodePool(recorder, 3, decoded.append, decoded.append, DecodeOrder(TARGET_S))  # type: ignore[arg-type]
    for offset in range(200):
        pool.submit(_event(offset % 4, offset, age_s=(offset % 3) * TARGET_S))
    pool.shutdown(wait=True)
    assert sorted(recorder.seen) == list(range(200))
    assert len(decoded) == 200
    assert len(pool.order) == 0


def test_the_scorer_tells_the_slo_policy_what_events_spend_after_decode_starts() -> None:
    """The order's prediction is measured: each scored event's time since its decode started, via the policy."""

    class Engine:
        def infer(self, tensor: np.ndarray) -> np.ndarray:
            return np.full((len(tensor), 2), 0.5, dtype=np.float32)

    slo = SloController(TARGET_S, max_batch_size=4, max_wait_s=0.0)
    batcher = MicroBatcher(4, 0.0, (3, 2, 2), slo=slo, policy="slo", capacity_rows=1000)
    scorer = Scorer(batcher, lambda: Engine(), lambda item: None, Metrics())  # type: ignore[arg-type,return-value]
    assert batcher.policy.decode_remaining_s() == 0.0
    earliest_start = time.monotonic() - 0.04
    for offset in range(4 * ADJUST_EVERY):
        item = _event(0, offset, age_s=0.0)
        item.decode_started = time.monotonic() - 0.04  # decode started 40 ms before it is put, so ≥ 40 ms before scored
        item.crops = np.zeros((1, 3, 2, 2), dtype=np.float32)
        batcher.put(item)
    for batch in iter(lambda: batcher.next_batch(timeout_s=0.0), None):
        scorer.score(batch)
    # No wall-clock bound: at most what the earliest-started event has spent by now.
    assert 0.04 <= batcher.policy.decode_remaining_s() <= time.monotonic() - earliest_start
