"""SLO-adaptive batching and static batch buckets (pure logic)."""

from __future__ import annotations

import numpy as np
import pytest

from processor.batcher import MicroBatcher
from processor.inflight import InFlight
from processor.slo import ADJUST_EVERY, ScoredBatch, SloController

SHAPE = (3, 4, 4)


def _item(offset: int, rows: int = 1) -> InFlight:
    item = InFlight(topic="t", partition=0, offset=offset, key=None, value=b"", headers=None, timestamp_ms=None)
    item.crops = np.full((rows, *SHAPE), offset + 1, dtype=np.float32)
    return item


def _feed(
    slo: SloController,
    latency_s: float,
    rows: int,
    batches: int = ADJUST_EVERY,
    infer_s: float = 0.0,
    waited_s: float = 0.0,
) -> None:
    for _ in range(batches):
        slo.observe(ScoredBatch(rows, infer_s, [latency_s] * 4, waited_s))


def test_batch_is_padded_to_the_next_bucket_with_zero_rows() -> None:
    batcher = MicroBatcher(8, 0.0, SHAPE, buckets=(1, 4, 8))
    for i in range(3):
        batcher.put(_item(i))
    batch = batcher.next_batch(0.1)
    assert batch is not None
    assert batch.size == 3 and batch.tensor.shape[0] == 4
    assert (batch.tensor[3] == 0).all() and (batch.tensor[2] == 3).all()


def test_without_buckets_the_batch_keeps_its_real_size() -> None:
    batcher = MicroBatcher(8, 0.0, SHAPE)
    for i in range(3):
        batcher.put(_item(i))
    batch = batcher.next_batch(0.1)
    assert batch is not None and batch.tensor.shape[0] == batch.size == 3


def test_latency_over_target_with_half_empty_batches_shortens_the_wait_and_keeps_the_limit() -> None:
    slo = SloController(target_s=0.2, max_batch_size=32, max_wait_s=0.02)
    _feed(slo, latency_s=0.18, rows=4, infer_s=0.001, waited_s=0.02)  # a ninth of the latency is the wait
    assert slo.wait_s == 0.01 and slo.limit == 32  # a limit batches never reach costs no latency


def test_aims_below_the_target_so_noise_does_not_tip_it_over() -> None:
    slo = SloController(target_s=0.1, max_batch_size=32, max_wait_s=0.01)
    _feed(slo, latency_s=0.085, rows=4, infer_s=0.001, waited_s=0.01)  # 85 % of the target: already act
    assert slo.wait_s == 0.005


def test_latency_that_built_up_before_the_batcher_asks_for_throughput_not_shorter_waits() -> None:
    # Overload upstream (events queueing for decode): the batcher wait is 5 ms of a 1.5 s p99. Shorter waits
    # would only make batches smaller and inference less efficient; the controller leans to throughput.
    slo = SloController(target_s=0.1, max_batch_size=64, max_wait_s=0.05)
    slo.limit, slo.wait_s = 16, 0.004
    _feed(slo, latency_s=1.5, rows=4, infer_s=0.001, waited_s=0.005)
    assert slo.limit == 32 and slo.wait_s > 0.004


def test_a_full_batch_may_spend_at_most_half_the_target_on_inference() -> None:
    # ViT-B/16 on a CPU: 0.5 s per image, so a 2 s target allows batches of 2 whatever the bounds say.
    slo = SloController(target_s=2.0, max_batch_size=16, max_wait_s=0.05)
    _feed(slo, latency_s=1.0, rows=8, infer_s=4.0)
    assert slo.limit == 2
    _feed(slo, latency_s=3.0, rows=2, infer_s=1.0)  # over target with full batches: growing would break the cap
    assert slo.limit == 2


def test_latency_over_target_with_full_batches_grows_the_limit_instead_of_shrinking() -> None:
    slo = SloController(target_s=0.05, max_batch_size=64, max_wait_s=0.02)
    slo.limit = 8
    _feed(slo, latency_s=0.2, rows=8)
    assert slo.limit == 16


def test_latency_well_under_target_lets_wait_and_limit_recover_within_their_maxima() -> None:
    slo = SloController(target_s=1.0, max_batch_size=32, max_wait_s=0.01)
    slo.limit, slo.wait_s = 4, 0.001
    for _ in range(40):
        _feed(slo, latency_s=0.01, rows=4, infer_s=0.001)
    assert slo.limit == 32 and slo.wait_s == 0.01


def test_the_time_after_decode_start_it_predicts_is_the_90th_percentile_of_recent_events() -> None:
    slo = SloController(target_s=0.1, max_batch_size=32, max_wait_s=0.005)
    assert slo.after_decode_s == 0.0  # not measured yet
    for batch in range(ADJUST_EVERY):
        slo.observe(ScoredBatch(10, 0.004, [0.05] * 10, 0.0, [0.001 * (batch * 10 + i + 1) for i in range(10)]))
    assert slo.after_decode_s == pytest.approx(np.percentile(np.arange(1, 81) * 0.001, 90))


def test_batcher_honours_the_controller_limit() -> None:
    slo = SloController(target_s=1.0, max_batch_size=8, max_wait_s=10.0)
    slo.limit = 2
    batcher = MicroBatcher(8, 10.0, SHAPE, slo=slo)
    for i in range(5):
        batcher.put(_item(i))
    batch = batcher.next_batch(0.1)
    assert batch is not None and batch.size == 2


def test_the_batcher_never_holds_an_event_longer_than_a_tenth_of_the_target() -> None:
    # Waiting spends the slack that absorbs noise: even with MAX_BATCH_WAIT_MS at 50 ms, a 100 ms target
    # allows 10 ms, and a quiet stretch (p99 far under the target) does not creep past it.
    slo = SloController(target_s=0.1, max_batch_size=64, max_wait_s=0.05)
    assert slo.wait_s == pytest.approx(0.01)
    for _ in range(20):
        _feed(slo, latency_s=0.01, rows=4, infer_s=0.001)
    assert slo.wait_s == pytest.approx(0.01)
