"""The goodput stage (bench.goodput): seeded traces every policy shares, its JSON shape and its report.

Smoke runs only: no wall-clock figure is asserted beyond "measured and positive".
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from bench.cli import main as bench_main
from bench.goodput import (
    SPLIT,
    GoodputPlan,
    _policy_env,
    _slug,
    bursty_trace,
    default_policies,
    goodput_plan,
    latency_split,
    poisson_trace,
    policy_spec,
    slowest_split,
    traces,
)
from bench.goodput import _row as goodput_cell
from bench.goodput_report import goodput_tables, partitions_lines, policy_label
from bench.kafka import Output
from processor.policies import PolicyName
from processor.settings import Settings

PLAN = GoodputPlan(max_batch_size=64, max_batch_wait_ms=50.0, latency_target_ms=100.0, samples=2000,
                   max_events=100, warm_up_s=1.0, burst_mean_pct=40.0, burst_on_s=1.0)  # fmt: skip


pytestmark = pytest.mark.usefixtures("no_dfp_env")


def test_every_policy_replays_the_same_arrivals_from_one_seed() -> None:
    first, second = traces(PLAN, 200.0), traces(PLAN, 200.0)
    assert list(first) == ["poisson25", "poisson50", "poisson75", "poisson90", "bursty"]
    for name, (rate, offsets) in first.items():
        assert rate == second[name][0] and np.array_equal(offsets, second[name][1])
        assert len(offsets) == PLAN.samples and offsets[0] == 0.0 and (np.diff(offsets) >= 0).all()


def test_a_trace_too_short_in_time_at_its_rate_gets_more_events_than_the_sample_count() -> None:
    plan = replace(PLAN, samples=1000, min_trace_s=10.0)
    counts = {name: len(offsets) for name, (_, offsets) in traces(plan, 200.0).items()}
    # 25 % (50/s) and the bursts (80/s) fill 10 s with 1,000 events; 75 % (150/s) and 90 % (180/s) need more.
    assert counts == {"poisson25": 1000, "poisson50": 1000, "poisson75": 1500, "poisson90": 1800, "bursty": 1000}
    assert traces(plan, 200.0)["poisson90"][1][-1] == pytest.approx(10.0, rel=0.1)


def test_a_subset_of_traces_replays_the_arrivals_a_full_run_gives_them() -> None:
    full = traces(PLAN, 200.0)
    only = traces(replace(PLAN, only=("poisson75", "bursty")), 200.0)
    assert list(only) == ["poisson75", "bursty"]
    for name, (rate, offsets) in only.items():
        assert rate == full[name][0] and np.array_equal(offsets, full[name][1])


def test_the_bench_refuses_an_unknown_trace_or_slice_count_before_measuring_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for flags in (["--goodput-traces", "poisson75,poisson80"], ["--goodput-slices", "0"]):
        with pytest.raises(SystemExit) as exit_:
            bench_main(["--stages", "goodput", *flags])
        assert exit_.value.code == 2 and flags[0] in capsys.readouterr().err


def test_a_cell_gives_the_share_within_the_slo_of_each_slice_in_the_order_they_ran() -> None:
    # Two slices of 4 events: the first all in time, the second one in time, one late and two never scored.
    parts = [{"latencies": [10.0, 20.0, 30.0, 40.0], "splits": [(1.0, 2.0, 3.0, 4.0, 0.0)] * 4, "events": 4,
              "dead_letters": 0, "rows": 4, "batches": 2, "late_p99_ms": 1.0},
             {"latencies": [50.0, 150.0], "splits": [(1.0, 2.0, 3.0, 4.0, 0.0)] * 2, "events": 4,
              "dead_letters": 0, "rows": 2, "batches": 1, "late_p99_ms": 2.0}]  # fmt: skip
    cell = goodput_cell(parts, (8.0, np.arange(8) / 8.0), PLAN)
    assert cell["slices_within_fraction"] == [1.0, 0.25]
    assert (cell["within_slo"], cell["within_fraction"], cell["events"]) == (5, 0.625, 6)


def test_poisson_trace_runs_at_its_rate() -> None:
    offsets = poisson_trace(100.0, 5000, np.random.default_rng(0))
    assert 5000 / offsets[-1] == pytest.approx(100.0, rel=0.05)


def test_bursty_trace_has_three_times_its_mean_inside_bursts_and_silence_between() -> None:
    offsets = bursty_trace(50.0, 6000, on_s=1.0, rng=np.random.default_rng(0))
    assert len(offsets) / offsets[-1] == pytest.approx(50.0, rel=0.05)
    phase = np.mod(offsets, 3.0)
    assert (phase < 1.0).all()  # nothing arrives in the 2 s off part of each 3 s period
    per_burst = np.bincount((offsets // 3.0).astype(int))[:-1]
    assert per_burst.mean() == pytest.approx(150.0, rel=0.05)  # 3 x 50/s for 1 s


def _row(goodput: float, p99: float, offered: float = 125.0) -> dict[str, Any]:
    return {"goodput_per_s": goodput, "offered_per_s": offered, "within_fraction": 0.5, "p50_ms": 10.0,
            "p99_ms": p99, "events": 1000, "mean_batch_size": 4.0}  # fmt: skip


def _result(policies: dict[str, Any], rates: dict[str, float], max_rate: float, bounds: tuple[int, float] = (32, 5.0)
            ) -> dict[str, Any]:  # fmt: skip
    """A saved goodput result as the report reads it: one cell per policy and trace, each trace at its mean rate."""
    plan = {"max_batch_size": bounds[0], "max_batch_wait_ms": bounds[1], "latency_target_ms": 100.0, "max_events": 3000}
    return {"goodput": {"plan": plan, "max_images_per_s": max_rate, "policies": policies,
                        "traces": {name: {"mean_rate_per_s": rate} for name, rate in rates.items()}}}  # fmt: skip


def test_report_has_one_column_per_policy_and_one_row_per_trace_citing_its_json() -> None:
    policies = {
        "fixed": {"poisson90": _row(60.0, 900.0), "bursty": _row(70.0, 300.0)},
        "slo": {"poisson90": {**_row(170.0, 95.0), "p99_split_ms": SPLIT_90}, "bursty": _row(78.0, 90.0)},
    }
    result = {**_result(policies, {"poisson90": 180.0, "bursty": 80.0}, 200.0, bounds=(64, 50.0)),
              "partitions": {"events": 3000, "images_per_s": {"1": 190.0, "6": 200.0, "1, 16 MiB fetches": 194.0},
                             "ratio_1_over_6": 0.95, "ratio_1_big_fetch_over_6": 0.97, "runs": {"1": [190.0]},
                             "met": True, "settings": {"max_batch_size": 32, "max_batch_wait_ms": 5.0}}}  # fmt: skip
    table = "\n".join(goodput_tables(result, "docs/bench/goodput.json"))
    assert "| trace (mean offered rate) | fixed 64 / 50 ms | **slo (ours)** |" in table
    assert "| Poisson 90 % (180.0/s) | 60.0/s (50 %) | 170.0/s (50 %) |" in table
    assert "| bursty, mean 40 %, 3x peaks (80.0/s) | 10 / 300 (b=4.00) | 10 / 90 (b=4.00) |" in table
    assert "`docs/bench/goodput.json`" in table and "Samples per cell: 1000 events" in table
    assert "ratio **0.950** (target ≥ 0.9: met)" in partitions_lines(result)[0]
    assert "| Poisson 90 % (180.0/s) | 4 | 30 | 3 | 50 | 8 |" in table  # ours' slowest 1 %, where it waited


def test_the_report_pairs_ours_with_each_policy_slice_by_slice() -> None:
    sliced = {"fixed": [1.0, 0.5, 0.9, 0.995], "slo": [1.0, 0.9, 0.5, 1.0]}
    policies = {p: {"poisson75": {**_row(100.0, 90.0), "slices_within_fraction": f}} for p, f in sliced.items()}
    result = _result(policies, {"poisson75": 150.0}, 200.0)
    table = "\n".join(goodput_tables(result))
    # Slice 2 ours ahead, slice 3 behind, slices 1 and 4 level (0.995 vs 1.0 is within a point).
    assert "| Poisson 75 % (150.0/s) | 4 slices; worst 50 % | 1 / 2 / 1; worst 50 % |" in table


SPLIT_90 = dict(zip(SPLIT, (4.0, 30.0, 3.0, 50.0, 8.0), strict=True))


def test_a_results_latency_splits_into_before_inside_and_after_the_processor_adding_up() -> None:
    # Input stamped at 1,000 ms; polled at 1,004; 40 ms inside (30 waiting for decode, 3 decoding); out at 1,052.
    out = Output("e", 1052, 1004.0, 0, 7, {"queue": 30.0, "decode": 3.0, "inference": 2.0, "total": 40.0}, False)
    split = latency_split(out, 1000)
    assert split == pytest.approx((4.0, 30.0, 3.0, 7.0, 8.0)) and sum(split) == pytest.approx(52.0)


def test_the_p99_split_averages_only_the_slowest_events() -> None:
    latencies = [10.0] * 99 + [500.0]
    splits = [(1.0, 1.0, 1.0, 1.0, 6.0)] * 99 + [(10.0, 400.0, 5.0, 80.0, 5.0)]
    assert slowest_split(latencies, splits) == dict(zip(SPLIT, (10.0, 400.0, 5.0, 80.0, 5.0), strict=True))


def test_a_column_may_carry_bounds_of_its_own_and_anything_else_is_refused() -> None:
    assert policy_spec("fixed:32/5") == (PolicyName.FIXED, 32, 5.0, False)
    assert policy_spec("fixed:8/2.5") == (PolicyName.FIXED, 8, 2.5, False)
    assert policy_spec("slo:32/5") == (PolicyName.SLO, 32, 5.0, False)
    assert policy_spec("slo") == (PolicyName.SLO, None, None, False)
    assert policy_spec("slo:32/5+fifo") == (PolicyName.SLO, 32, 5.0, True)  # ours without its decode order
    for bad in ("fixed:0/5", "fixed:32", "lifo:32/5", "lifo", "slo+lifo"):
        with pytest.raises(ValueError, match="policy"):
            policy_spec(bad)


def test_a_column_with_bounds_of_its_own_says_them_in_its_label() -> None:
    plan = {"max_batch_size": 64, "max_batch_wait_ms": 50.0}
    assert policy_label("fixed", plan) == "fixed 64 / 50 ms"
    assert policy_label("fixed:32/5", plan) == "fixed 32 / 5 ms"
    assert policy_label("slo:32/5", plan) == "**slo (ours)** 32 / 5 ms"
    assert policy_label("slo", plan) == "**slo (ours)**"
    assert policy_label("slo+fifo", plan) == "**slo (ours)**, FIFO decode"


def test_every_policy_shares_the_bounds_a_user_gets_unless_the_bench_is_told_otherwise() -> None:
    args = argparse.Namespace(quick=False, slo_max_batch_size=None, slo_max_wait_ms=None, latency_target_ms=None,
                              goodput_samples=None, burst_mean_pct=40.0, goodput_seconds=10.0,
                              goodput_slices=4, goodput_traces=None)  # fmt: skip
    plan = goodput_plan(Settings(max_batch_size=32, max_batch_wait_ms=5.0), args)
    assert (plan.max_batch_size, plan.max_batch_wait_ms, plan.latency_target_ms) == (32, 5.0, 100.0)
    args.slo_max_batch_size, args.slo_max_wait_ms = 64, 50.0
    assert goodput_plan(Settings(), args).max_batch_size == 64


def test_the_default_columns_add_fixed_batching_at_roomy_bounds_to_the_five_policies() -> None:
    assert default_policies(Settings(max_batch_size=32, max_batch_wait_ms=5.0)) == [
        "fixed", "fixed:64/50", "triton", "cork", "aimd", "slo"]  # fmt: skip


def test_a_policy_with_its_own_bounds_runs_with_them_and_the_others_share_the_plans() -> None:
    own = _policy_env(PLAN, "fixed:32/5")
    assert (own["DFP_BATCH_POLICY"], own["DFP_MAX_BATCH_SIZE"], own["DFP_MAX_BATCH_WAIT_MS"]) == ("fixed", "32", "5.0")
    shared = _policy_env(PLAN, "triton")
    assert (shared["DFP_BATCH_POLICY"], shared["DFP_MAX_BATCH_SIZE"], shared["DFP_MAX_BATCH_WAIT_MS"]) == (
        "triton", "64", "50.0")  # fmt: skip
    assert _slug("fixed:32/5") == "fixed-32-5"  # topic, group and event-id names take only [A-Za-z0-9._-]


def test_the_bench_refuses_an_unknown_policy_before_measuring_anything(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench_main(["--stages", "goodput", "--policies", "slo,lifo"])
    assert exit_.value.code == 2 and "unknown policy 'lifo'" in capsys.readouterr().err


def _cells(**goodput: float) -> dict[str, Any]:
    return {trace: _row(value, P99.get(trace, 300.0)) for trace, value in goodput.items()}


P99 = {"poisson25": 30.0, "poisson50": 45.0, "poisson75": 150.0}


def test_a_gap_too_small_for_one_decimal_is_given_with_two() -> None:
    policies = {"triton": _cells(poisson50=77.19), "slo": _cells(poisson50=77.16)}
    result = _result(policies, {"poisson50": 78.6}, 157.0)
    assert "50 % 77.2 vs 77.2/s `triton` (2nd, -0.04 %)" in "\n".join(goodput_tables(result))


def test_the_report_states_each_target_from_the_runs_own_rows() -> None:
    policies = {"fixed": _cells(poisson25=50.0, poisson50=99.0, poisson75=60.0, bursty=10.0),
                "fixed:32/5": _cells(poisson25=50.0, poisson50=99.0, poisson75=80.0, bursty=30.0),
                "triton": _cells(poisson25=50.0, poisson50=100.0, poisson75=90.0, bursty=35.0),
                "slo": _cells(poisson25=50.0, poisson50=98.0, poisson75=120.0, bursty=40.0)}  # fmt: skip
    rates = dict.fromkeys(("poisson25", "poisson50", "poisson75", "bursty"), 100.0)
    result = _result(policies, rates, 200.0, bounds=(64, 50.0))
    table = "\n".join(goodput_tables(result))
    assert "| trace (mean offered rate) | fixed 64 / 50 ms | fixed 32 / 5 ms | triton | **slo (ours)** |" in table
    assert "shares the bounds 64 rows / 50.0 ms (except fixed 32 / 5 ms, at bounds of its own)" in table
    assert (
        "- Ours ≥ every other policy at every load: **not met** — 25 % 50.0 vs 50.0/s `fixed 64 / 50 ms` (tied); "
        "50 % 98.0 vs 100.0/s `triton` (4th, -2.0 %); 75 % 120.0 vs 90.0/s `triton` (1st); "
        "bursty 40.0 vs 35.0/s `triton` (1st)."
    ) in table
    # The best fixed setting is the better of the two fixed columns: 80/s at 75 % and 30/s in the bursts.
    assert (
        "- Ours ≥ 1.2 × the best fixed setting (fixed 64 / 50 ms, fixed 32 / 5 ms) at 75 % load and in the "
        "bursts: met — 75 % 1.50 × (any policy: at most 1.56 ×); bursty 1.33 × (any policy: at most 4.17 ×)."
    ) in table
    assert (
        "- Ours' p99 within the 100 ms SLO up to 75 % load: **not met** — 25 % 30 ms, 50 % 45 ms, 75 % 150 ms "
        "(a p99 within the SLO needs 99 % of the events within it; 75 %: the most any policy kept within the SLO was "
        "50.0 % (`fixed 64 / 50 ms`))." in table
    )


def test_the_report_says_when_no_policy_could_reach_the_ratio_over_the_best_fixed_setting() -> None:
    # Fixed batching kept 90 of the 100 events/s offered at 75 %: keeping every event in time gives 1.11 ×.
    policies = {"fixed": {"poisson75": _row(90.0, 150.0, offered=100.0)},
                "slo": {"poisson75": _row(98.0, 120.0, offered=100.0)}}  # fmt: skip
    result = _result(policies, {"poisson75": 100.0}, 133.0)
    table = "\n".join(goodput_tables(result))
    assert "at 75 % load and in the bursts: **not met** — 75 % 1.09 × (any policy: at most 1.11 ×)." in table


def test_the_p99_line_names_no_ceiling_where_some_policy_kept_99_percent_in_time() -> None:
    fixed = {**_row(99.0, 90.0), "within_fraction": 0.995}  # fixed batching kept its p99 within the SLO
    policies = {"fixed": {"poisson75": fixed}, "slo": {"poisson75": {**_row(97.0, 130.0), "within_fraction": 0.97}}}
    result = _result(policies, {"poisson75": 100.0}, 133.0)
    table = "\n".join(goodput_tables(result))
    assert "- Ours' p99 within the 100 ms SLO up to 75 % load: **not met** — 75 % 130 ms.\n" in table + "\n"
