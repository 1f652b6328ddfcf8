"""Batching policies (processor.policies): each test states one policy's rule on a queue snapshot."""

from __future__ import annotations

import pytest

from processor.policies import (
    AimdPolicy,
    ArrivalRate,
    CorkPolicy,
    FixedPolicy,
    PolicyName,
    QueueState,
    SloPolicy,
    TritonPolicy,
    make_policy,
)
from processor.slo import ADJUST_EVERY, ScoredBatch, SloController, fit_cost


def _q(rows: int, oldest: float = 0.0, newest: float = 0.0, age: float = 0.0, arrivals: float = 0.0) -> QueueState:
    return QueueState(rows, oldest_wait_s=oldest, newest_wait_s=newest, head_age_s=age, arrival_rows_per_s=arrivals)


def test_fixed_takes_a_full_batch_or_waits_out_max_wait_for_a_partial_one() -> None:
    policy = FixedPolicy(max_batch_size=8, max_wait_s=0.01)
    assert policy.decide(_q(8)).take == 8
    waiting = policy.decide(_q(3, oldest=0.004))
    assert waiting.take == 0 and waiting.wait_s == pytest.approx(0.006) and waiting.wake_rows == 8
    assert policy.decide(_q(3, oldest=0.01)).take == 8  # due: take what is there (up to 8 rows)


def test_triton_runs_the_largest_preferred_batch_at_once_and_waits_only_when_none_can_be_formed() -> None:
    policy = TritonPolicy(max_batch_size=16, max_wait_s=0.05)
    assert policy.preferred == [2, 4, 8, 16]
    assert policy.decide(_q(5)).take == 4  # 4 is preferred and formable: no waiting for 8
    assert policy.decide(_q(40)).take == 16
    lone = policy.decide(_q(1, oldest=0.01))
    assert lone.take == 0 and lone.wake_rows == 2 and lone.wait_s == pytest.approx(0.04)
    assert policy.decide(_q(1, oldest=0.05)).take == 16  # max_queue_delay passed: what is there goes


def test_triton_prefers_the_configured_static_buckets() -> None:
    policy = TritonPolicy(max_batch_size=32, max_wait_s=0.05, preferred=(8, 32))
    assert policy.preferred == [8, 32]
    assert policy.decide(_q(7, oldest=0.001)).take == 0 and policy.decide(_q(9)).take == 8


def test_cork_keeps_waiting_while_waiting_costs_less_than_the_usual_wait() -> None:
    policy = CorkPolicy(max_batch_size=64, max_wait_s=0.05)
    for rows in (1, 2, 4, 8, 1, 2, 4, 8):
        policy.observe(ScoredBatch(rows, inference_s=0.001 + 0.002 * rows, wait_s=0.02))
    assert policy.a == pytest.approx(0.002) and policy.b == pytest.approx(0.001)
    # 2 rows: 2 · (1 ms + 1 ms tick + 2 ms per row) = 8 ms <= 0.95 · 20 ms: wait a tick, or for one more row.
    cork = policy.decide(_q(2, oldest=0.003, newest=0.001))
    assert cork.take == 0 and cork.wake_rows == 3
    # 5 rows: 5 · 4 ms = 20 ms > 19 ms: releasing now costs less than holding everyone longer.
    assert policy.decide(_q(5, oldest=0.003, newest=0.001)).take == 5
    assert policy.decide(_q(64)).take == 64 and policy.decide(_q(1, oldest=0.05)).take == 64


def test_aimd_never_waits_adds_one_after_a_batch_within_target_and_backs_off_ten_percent_after_one_over() -> None:
    policy = AimdPolicy(max_batch_size=64, max_wait_s=0.05, target_s=0.1)
    assert policy.limit == 1 and policy.decide(_q(5)).take == 1
    for _ in range(19):
        policy.observe(ScoredBatch(policy.limit, inference_s=0.01))
    assert policy.limit == 20
    policy.observe(ScoredBatch(20, inference_s=0.2))
    assert policy.limit == 18
    policy.observe(ScoredBatch(3, inference_s=0.01))  # a batch short of the cap says nothing about the cap
    assert policy.limit == 18


def _controller(a: float, b: float, *, p99_s: float = 0.03, target_s: float = 0.1) -> SloController:
    """A controller that has seen batches of 1, 4, 8 and 16 rows cost a·rows + b, and p99 `p99_s`."""
    slo = SloController(target_s=target_s, max_batch_size=64, max_wait_s=0.05)
    for i in range(2 * ADJUST_EVERY):
        rows = (1, 4, 8, 16)[i % 4]
        slo.observe(ScoredBatch(rows, a * rows + b, [p99_s] * 4, 0.001))
    return slo


CPU_SMALL_MODEL = (0.002, 0.0001)  # a, b: a batch costs per row what a lone row does: batching does not pay
GPU = (0.0002, 0.003)  # launches dominate a small batch: a full one costs a tenth per row


def test_the_controller_fits_inference_cost_per_row_and_per_batch() -> None:
    a, b = _controller(*GPU).cost_model()
    assert a == pytest.approx(0.0002) and b == pytest.approx(0.003)
    assert fit_cost([(8, 0.016), (8, 0.016)]) == pytest.approx((0.002, 0.0))  # one size seen: b unknown, 0


def test_where_batching_does_not_pay_ours_never_waits_and_takes_what_still_lands_the_head_in_time() -> None:
    policy = SloPolicy(_controller(*CPU_SMALL_MODEL))
    assert policy.decide(_q(3, oldest=0.0, age=0.01)).take == 24  # the law's limit (half the target); all 3 go
    assert policy.decide(_q(40, oldest=0.0, age=0.05)).take == 14  # 29.9 ms of slack: 14 rows, the rest next
    assert policy.wait_s == 0.0


def test_where_batching_pays_ours_waits_for_a_fuller_batch_only_while_events_queue_before_the_batcher() -> None:
    slo = _controller(*GPU)
    slo.limit, slo.wait_s = 16, 0.005
    policy = SloPolicy(slo)
    assert policy.decide(_q(16, age=0.03)).take == 16
    # The head spent 29 ms before the batcher (a fifth of the target is 20): a queue upstream, so a fuller batch
    # frees the CPU it shares with decode; it waits the law's 5 ms less the 1 ms it has waited.
    waiting = policy.decide(_q(3, oldest=0.001, age=0.03))
    assert waiting.take == 0 and waiting.wait_s == pytest.approx(0.004)
    # Straight from Kafka to the batcher: no queue to free CPU for. Waiting would only add latency, and a busy
    # model gathers a fuller batch by itself while the last one runs.
    assert policy.decide(_q(3, oldest=0.001, age=0.005)).take >= 3 and policy.wait_s == 0.0


def test_a_head_never_waits_past_the_point_where_its_batch_would_land_it_late() -> None:
    slo = _controller(*GPU)
    slo.limit, slo.wait_s = 16, 0.005
    policy = SloPolicy(slo)
    # 2,000 rows/s arriving: a 5 ms wait forms 3 + 10 = 13 rows. At 75 ms, 80 ms budget - 3 ms per batch leaves
    # room for 10 rows, not 13: it goes now.
    late = policy.decide(_q(3, oldest=0.0, age=0.075, arrivals=2000.0))
    assert late.take > 0 and policy.late_batches == 1
    # 70 ms old: 80 - 70 - 3 - 13 x 0.2 = 4.4 ms spare, shorter than the law's 5 ms wait; the wait is cut to it.
    assert policy.decide(_q(3, oldest=0.0, age=0.07, arrivals=2000.0)).wait_s == pytest.approx(0.0044)


def test_the_risk_is_judged_against_the_batch_the_wait_forms_not_a_full_one_at_the_limit() -> None:
    slo = _controller(*GPU)
    slo.limit, slo.wait_s = 16, 0.005
    policy = SloPolicy(slo)
    # 200 rows/s: the wait forms 3 + 1 rows, not the limit's 16, so a head at 75 ms may still wait the 1.2 ms
    # its budget has left (80 - 75 - 3 - 4 x 0.2) for a fuller batch instead of going with the 3 rows ready.
    waiting = policy.decide(_q(3, oldest=0.0, age=0.075, arrivals=200.0))
    assert waiting.take == 0 and waiting.wait_s == pytest.approx(0.0012) and policy.late_batches == 0


def test_the_batch_is_never_so_big_that_its_inference_makes_the_head_late() -> None:
    slo = _controller(*GPU)
    slo.limit = 64
    policy = SloPolicy(slo)
    # 80 ms - 60 ms - 3 ms leaves 17 ms: 85 rows at 0.2 ms would fit, 64 is the bound; at 75 ms, 10 rows.
    assert policy.decide(_q(64, age=0.06)).take == 64
    assert policy.decide(_q(64, age=0.075)).take == 10


def test_where_batching_pays_no_batch_is_cut_below_the_rows_that_keep_up_with_arrivals() -> None:
    slo = _controller(*GPU)
    slo.limit = 64
    policy = SloPolicy(slo)
    # 75 ms old: 10 rows would land it in time (above). At 1,900 rows/s a batch must serve 1.25 × that:
    # n / (0.2 ms · n + 3 ms) >= 2,375/s from n = 14. Ten-row batches would fall behind, and every head age.
    assert policy.decide(_q(64, age=0.075)).take == 10  # arrival rate not known yet: no floor
    assert policy.decide(_q(64, age=0.075, arrivals=1900)).take == 14
    # More than the model serves at any batch size (1 / 0.2 ms = 5,000/s at best): the fullest batches.
    assert policy.decide(_q(64, age=0.075, arrivals=4500)).take == 64


def test_in_an_overload_a_cpu_model_takes_the_rows_near_its_best_throughput_not_the_fullest_batch() -> None:
    # ViT-Ti-like cost: 1.5 ms per batch against 5.3 ms a row. Past 6 rows a batch gains under 5 % of throughput
    # and only holds the model longer, so an overload (no batch keeps up at 300 rows/s) gets 6, not 64.
    policy = SloPolicy(_controller(0.0053, 0.0015))
    assert policy.decide(_q(64, age=0.072)).take == 1  # 6.5 ms of slack: one row lands the head in time
    assert policy.decide(_q(64, age=0.072, arrivals=300)).take == 6


def test_where_batching_does_not_pay_the_arrival_rate_changes_no_batch() -> None:
    policy = SloPolicy(_controller(*CPU_SMALL_MODEL))
    assert policy.decide(_q(40, age=0.05, arrivals=5000)).take == 14


def test_the_arrival_rate_is_sampled_per_window_and_smoothed() -> None:
    rate = ArrivalRate()
    rate.add(1, 0.0)
    rate.add(9, 0.2)
    assert rate.rows_per_s == 0.0  # the first window (250 ms) is not over: unknown
    rate.add(40, 0.25)
    assert rate.rows_per_s == pytest.approx(200.0)  # 50 rows in 250 ms
    rate.add(125, 0.5)
    assert rate.rows_per_s == pytest.approx(350.0)  # 500/s sampled, half-weighted against 200


def test_where_batching_does_not_pay_a_lost_head_takes_the_laws_limit_never_a_longer_batch() -> None:
    # 64 rows of a model at 7 ms a row would hold the model 450 ms: no faster through the backlog (each row
    # costs the same), and every event behind it late. The law's limit keeps a batch within half the target.
    slo = _controller(0.007, 0.0003, p99_s=0.4)
    policy = SloPolicy(slo)
    assert slo.over_target and slo.limit == 7
    assert policy.decide(_q(200, age=0.5)).take == 7 and policy.late_batches == 1


def test_where_batching_pays_a_backlog_behind_a_lost_head_goes_in_the_largest_batch() -> None:
    slo = _controller(*GPU, p99_s=0.4)
    slo.limit = 16
    policy = SloPolicy(slo)
    assert slo.over_target and policy.decide(_q(200, age=0.5)).take == 64  # not the controller's 16
    # No backlog, and the head's 300 ms went by in the batcher: at once, up to the law's limit, never waiting.
    assert policy.decide(_q(5, oldest=0.29, age=0.3)).take == 16


def test_a_head_lost_to_the_queue_before_the_batcher_waits_for_the_laws_batch_instead_of_going_alone() -> None:
    # The tiny model on a 2-vCPU VM: decode waits for CPU, so the head spent 300 ms before reaching the batcher.
    # A batch of 1-2 rows spends per-batch CPU that decode needs; 15 s of 75 % load kept 349 results/s within
    # the SLO with fixed 32 / 5 ms (4.4 rows a batch) and 101/s with ours sending lost heads at once (1.9 rows).
    slo = _controller(0.00033, 0.0004, p99_s=0.4)
    slo.limit, slo.wait_s = 32, 0.005
    policy = SloPolicy(slo)
    waiting = policy.decide(_q(2, oldest=0.001, age=0.3))
    assert waiting.take == 0 and waiting.wait_s == pytest.approx(0.004) and waiting.wake_rows == 32
    assert policy.decide(_q(5, oldest=0.005, age=0.3)).take == 32  # the law's wait is out: what is ready goes
    assert policy.decide(_q(40, oldest=0.001, age=0.3)).take >= 32  # a full batch goes at once


def test_a_cpu_model_that_saves_a_fifth_per_row_in_batches_counts_as_paying_but_never_blocks_for_long() -> None:
    # ViT-Ti int8 on a 2-vCPU VM: 7.3 ms alone, 5.2 ms a row at batch 4 (a ≈ 5.3 ms, b ≈ 1.5 ms per batch).
    slo = _controller(0.0053, 0.0015)
    slo.wait_s = 0.005
    policy = SloPolicy(slo)
    assert policy.decide(_q(1, oldest=0.001, age=0.03)).take == 0  # a queue upstream: waits for a partner
    assert policy.wait_s == 0.005
    lost = _controller(0.0053, 0.0015, p99_s=0.4)
    lost.limit = 4
    # A backlog behind a lost head: the largest batch within half the target (~9 rows), not MAX_BATCH_SIZE's 64.
    assert lost.over_target and SloPolicy(lost).decide(_q(200, age=0.5)).take == lost.inference_cap() == 9


def test_unset_policy_is_slo_with_a_latency_target_and_fixed_without() -> None:
    assert make_policy(None, 8, 0.01).name == PolicyName.FIXED
    assert make_policy(None, 8, 0.01, slo=SloController(0.1, 8, 0.01)).name == PolicyName.SLO
    assert make_policy("triton", 8, 0.01).name == PolicyName.TRITON
    with pytest.raises(ValueError, match="DFP_LATENCY_TARGET_MS"):
        make_policy("aimd", 8, 0.01)


def test_settings_refuse_a_target_seeking_policy_without_a_target_naming_both_variables() -> None:
    from processor.errors import ConfigError
    from processor.settings import load_settings

    with pytest.raises(ConfigError, match="DFP_BATCH_POLICY=aimd needs DFP_LATENCY_TARGET_MS"):
        load_settings({"batch_policy": "aimd"})
    assert load_settings({"batch_policy": "cork"}).batch_policy is PolicyName.CORK
