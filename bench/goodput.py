"""Goodput and partitions stages: batching policies under identical arrival traces, on Apache Kafka.

goodput: measure the processor's saturated rate (a backlog, fixed batching at the plan's bounds), then for each
batching policy start the same processor with DFP_BATCH_POLICY set and replay the same seeded traces through
it: Poisson arrivals at 25, 50, 75 and 90 % of that rate, and an on/off trace whose bursts run at 3x its mean.
Latency is output Kafka timestamp − input Kafka timestamp; goodput is results within the SLO per second.
partitions: the saturated rate with the input topic on 1 partition vs 6 (does one partition keep the model busy?).

Both run on real Apache Kafka (devtools.apache_kafka): the embedded broker holds every fetch for
fetch.wait.max.ms, which would put the broker's latency into every figure. `--broker tansu` exists only for
the quick smoke test.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bench.e2e import e2e_run, latency_percentiles, metric_samples, scrape_gauges, wait_for_outputs
from bench.kafka import Output, input_timestamps
from bench.stages import KafkaRun, Running
from bench.workload import relabelled
from devtools.samples import SampleEvent
from processor.policies import PolicyName
from processor.settings import Settings

POLICIES = tuple(p.value for p in PolicyName)
# POLICY[:ROWS/MS][+fifo]: a policy at bounds of its own; +fifo decodes in consume order (DFP_DEFER_LOST_PARTITIONS
# off), to show what ours' decode order buys.
COLUMN = re.compile(r"(\w+)(?::(\d+)/(\d+(?:\.\d+)?))?(\+fifo)?")


class PolicySpec(NamedTuple):
    """One goodput column: a policy, bounds of its own (None: the plan's), and whether decode stays FIFO."""

    name: PolicyName
    rows: int | None = None
    wait_ms: float | None = None
    fifo: bool = False


POISSON_LOADS = (25, 50, 75, 90)
TRACE_NAMES = (*(f"poisson{pct}" for pct in POISSON_LOADS), "bursty")
BURST_PEAK = 3.0  # bursts run at 3x the trace's mean rate, on for a third of each period, off otherwise
PARTITION_COUNTS = (1, 6)


@dataclass(frozen=True, slots=True)
class GoodputPlan:
    """Bounds every policy shares, the SLO, and how much each trace sends."""

    max_batch_size: int
    max_batch_wait_ms: float
    latency_target_ms: float
    samples: int  # events per trace at least (each one a latency sample)
    max_events: int  # backlog that measures the saturated rate
    warm_up_s: float  # per policy, sent at 50 % load and not counted
    burst_mean_pct: float  # the bursty trace's mean load; its bursts reach BURST_PEAK x this
    burst_on_s: float
    chunks: int = 4  # each trace is replayed in this many slices, the policies taking turns slice by slice
    # Each trace runs this long at least (more events than `samples` at high rates): 2,000 events of the tiny
    # model at 75 % load last under 4 s, four slices of ~1 s each, which show how a queue starts rather than
    # where it settles (the day's runs moved by tens of per cent in those cells and far less on ViT-Ti's 16 s+).
    min_trace_s: float = 0.0
    seed: int = 0
    # The traces replayed (--goodput-traces); every one is still drawn, so a subset replays the same arrivals.
    only: tuple[str, ...] = TRACE_NAMES


def goodput_plan(settings: Settings, args: argparse.Namespace) -> GoodputPlan:
    """Today's bounds (MAX_BATCH_SIZE / MAX_BATCH_WAIT_MS unless given) and a 100 ms SLO unless given.

    Every policy runs at the bounds a user gets by choosing only DFP_BATCH_POLICY. Roomier shared bounds
    (2x / 10x) made ours worse, not better: it waited up to 10 ms instead of 5 and sent bigger batches, and lost
    the tiny model's 75 %, 90 % and bursty cells to itself at 32 / 5 ms in both runs that compared the two.
    """
    quick = bool(args.quick)
    return GoodputPlan(
        max_batch_size=args.slo_max_batch_size or settings.max_batch_size,
        max_batch_wait_ms=args.slo_max_wait_ms or settings.max_batch_wait_ms,
        latency_target_ms=args.latency_target_ms or 100.0,
        samples=args.goodput_samples or (40 if quick else 1000),
        max_events=60 if quick else 3000,
        warm_up_s=0.3 if quick else 2.0,
        burst_mean_pct=args.burst_mean_pct,
        burst_on_s=0.2 if quick else 1.0,
        chunks=1 if quick else args.goodput_slices,
        min_trace_s=0.0 if quick else args.goodput_seconds,
        only=tuple(args.goodput_traces or TRACE_NAMES),
    )


def poisson_trace(rate: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """Arrival offsets (s, first at 0) of `count` events of a Poisson process at `rate` per second."""
    gaps = rng.exponential(1.0 / rate, count)
    return np.cumsum(gaps) - gaps[0]


def bursty_trace(mean_rate: float, count: int, on_s: float, rng: np.random.Generator) -> np.ndarray:
    """On/off arrivals: Poisson at BURST_PEAK x `mean_rate` for `on_s`, then silence, so the mean is `mean_rate`."""
    period = on_s * BURST_PEAK
    on_time = poisson_trace(mean_rate * BURST_PEAK, count, rng)  # time spent inside bursts
    return np.floor(on_time / on_s) * period + np.mod(on_time, on_s)


def traces(plan: GoodputPlan, max_rate: float) -> dict[str, tuple[float, np.ndarray]]:
    """The plan's traces by name → (mean offered rate, arrival offsets); one seed, so every policy sees the same.

    Every trace is drawn in the same order whichever the plan replays, so `--goodput-traces poisson75` replays
    exactly the arrivals the 75 % cell of a full run gets.
    """
    rng = np.random.default_rng(plan.seed)
    out = {}
    for pct in POISSON_LOADS:
        rate = max_rate * pct / 100.0
        out[f"poisson{pct}"] = (rate, poisson_trace(rate, _events(plan, rate), rng))
    mean = max_rate * plan.burst_mean_pct / 100.0
    out["bursty"] = (mean, bursty_trace(mean, _events(plan, mean), plan.burst_on_s, rng))
    return {name: trace for name, trace in out.items() if name in plan.only}


def _events(plan: GoodputPlan, rate: float) -> int:
    """`samples` events, or more where they would not fill `min_trace_s` at `rate`."""
    return max(plan.samples, math.ceil(rate * plan.min_trace_s))


@contextmanager
def broker(kind: str, workdir: Path) -> Iterator[tuple[str, int | None]]:
    """(bootstrap, pid) of a broker started for the stage and stopped by PID: Apache Kafka, or Tansu."""
    if kind == "tansu":
        from devtools.broker import EmbeddedBroker

        with EmbeddedBroker(log_path=workdir / "broker.log") as tansu:
            yield tansu.bootstrap, tansu.pid
        return
    from devtools.apache_kafka import ApacheKafka, check_tools, fetch_kafka_jars

    check_tools()
    (workdir / "kafka").mkdir(parents=True, exist_ok=True)
    kafka = ApacheKafka(fetch_kafka_jars(), workdir / "kafka")
    kafka.start()
    try:
        yield kafka.bootstrap, kafka.pid
    finally:
        kafka.stop()


def run_policy_stages(todo: list[str], settings: Settings, pool: list[SampleEvent], result: dict[str, Any],
                      bar: Any, args: argparse.Namespace) -> None:  # fmt: skip
    """goodput and/or partitions on a broker of their own (Apache Kafka unless --broker tansu)."""
    from bench.stages import QUICK, Durations

    workdir = Path(tempfile.mkdtemp(prefix="dfp-goodput-"))
    uid = uuid.uuid4().hex[:8]
    try:
        with broker(args.broker, workdir) as (bootstrap, pid):
            s = settings.model_copy(update={"bootstrap_servers": bootstrap})
            run = KafkaRun(s, pool, QUICK if args.quick else Durations(), result, bar, args, workdir, pid, uid)
            plan = goodput_plan(s, args)
            if "partitions" in todo:
                result["partitions"] = run_partitions(run, plan)
            if "goodput" in todo:
                result["goodput"] = run_goodput(run, plan)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _topics(run: KafkaRun, name: str, partitions: int) -> tuple[str, str, str]:
    from devtools.broker import create_topics

    topics = (f"gp-{name}-in-{run.uid}", f"gp-{name}-out-{run.uid}", f"gp-{name}-dlq-{run.uid}")
    create_topics(run.s.bootstrap_servers, [topics[0]], partitions=partitions)
    create_topics(run.s.bootstrap_servers, list(topics[1:]), partitions=run.args.partitions)
    return topics


def saturated_rate(run: KafkaRun, name: str, partitions: int, events: int, env: dict[str, str]) -> float:
    """Events/s of the processor draining a backlog of `events` (first poll to last output)."""
    topics = _topics(run, name, partitions)
    run.backlog(topics[0], events, f"{name}")
    with run.processor(topics, name, env) as running:
        outputs = wait_for_outputs(running.collector, f"{name}-", events, running.proc, max(180.0, events / 5.0))
    return round(e2e_run(outputs).images_per_s, 2)


# librdkafka fetches at most max.partition.fetch.bytes (1 MiB) per partition per request: a few 100-300 KB
# image events. One partition gets one such slice per round trip, six get six; the variant below raises it.
BIG_FETCH = {"DFP_KAFKA_MAX_PARTITION_FETCH_BYTES": str(16 * 1024 * 1024)}


def run_partitions(run: KafkaRun, plan: GoodputPlan) -> dict[str, Any]:
    """Saturated rate with the input on 1 vs 6 partitions, same settings and backlog, in an A-B-C-C-B-A order.

    Also 1 partition with max.partition.fetch.bytes at 16 MiB, to show whether the fetch size is the limit.
    """
    runs: dict[str, list[float]] = {"1": [], "6": [], "1, 16 MiB fetches": []}
    order = [("1", 1, {}), ("6", 6, {}), ("1, 16 MiB fetches", 1, BIG_FETCH)]
    rounds = 1 if run.args.quick else 2
    for i in range(rounds):
        for name, count, env in order if i % 2 == 0 else order[::-1]:  # drift on a shared machine meets both
            run.bar.set_description(f"partitions: {name}")
            tag = f"part{count}{'f' if env else ''}r{i}"
            runs[name].append(saturated_rate(run, tag, count, plan.max_events, env))
            run.bar.write(f"partitions {name}: {runs[name][-1]} events/s")
    rates = {name: round(float(np.mean(values)), 2) for name, values in runs.items()}
    ratio = round(rates["1"] / rates["6"], 3) if rates["6"] else None
    big = round(rates["1, 16 MiB fetches"] / rates["6"], 3) if rates["6"] else None
    run.bar.update(1)
    return {"events": plan.max_events, "images_per_s": rates, "runs": runs, "ratio_1_over_6": ratio,
            "ratio_1_big_fetch_over_6": big, "target": 0.9, "met": None if ratio is None else ratio >= 0.9,
            "settings": {"max_batch_size": run.s.max_batch_size, "max_batch_wait_ms": run.s.max_batch_wait_ms,
                         "batch_policy": "fixed", "big_fetch": BIG_FETCH}}  # fmt: skip


def policy_spec(text: str) -> PolicySpec:
    """A goodput column: a DFP_BATCH_POLICY name, optionally `:ROWS/MS` (bounds of its own) and `+fifo`.

    The other columns share the plan's bounds; `fixed:32/5` is today's default batcher as a user runs it.
    """
    column = COLUMN.fullmatch(text)
    try:
        policy = PolicyName(column[1] if column else text)
    except ValueError:
        names = ", ".join(p.value for p in PolicyName)
        raise ValueError(f"unknown policy {text!r} (policies: {names}; POLICY:ROWS/MS, +fifo)") from None
    assert column is not None
    rows, wait_ms = (int(column[2]), float(column[3])) if column[2] else (None, None)
    if rows is not None and rows < 1:
        raise ValueError(f"policy {text!r}: a batch needs at least 1 row")
    return PolicySpec(policy, rows, wait_ms, bool(column[4]))


def default_policies(settings: Settings) -> list[str]:
    """Every policy at the shared bounds, plus `fixed` at roomy ones (2x MAX_BATCH_SIZE / 10x MAX_BATCH_WAIT_MS)."""
    roomy = f"fixed:{2 * settings.max_batch_size}/{10 * settings.max_batch_wait_ms:g}"
    return [PolicyName.FIXED.value, roomy, *(p for p in POLICIES if p != PolicyName.FIXED)]


def _slug(policy: str) -> str:
    """A policy spec as topic, group and log-file names take it (`fixed:32/5` → `fixed-32-5`)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", policy)


def _policy_env(plan: GoodputPlan, policy: str, broker_kind: str = "kafka") -> dict[str, str]:
    name, rows, wait_ms, fifo = policy_spec(policy)
    env = {"DFP_BATCH_POLICY": name.value, "DFP_MAX_BATCH_SIZE": str(rows or plan.max_batch_size),
           "DFP_MAX_BATCH_WAIT_MS": str(plan.max_batch_wait_ms if wait_ms is None else wait_ms),
           "DFP_LATENCY_TARGET_MS": str(plan.latency_target_ms),
           "DFP_DEFER_LOST_PARTITIONS": str(not fifo).lower()}  # fmt: skip
    if broker_kind == "kafka":
        # Real Kafka answers a fetch as soon as data arrives; the 10 ms meant for Tansu would only make the
        # idle processors (all policies run side by side) poll the broker 100 times a second each.
        env["DFP_KAFKA_FETCH_WAIT_MAX_MS"] = "500"
    return env


def run_goodput(run: KafkaRun, plan: GoodputPlan) -> dict[str, Any]:
    """The saturated rate, then every trace through every policy; one row per (policy, trace)."""
    run.bar.set_description("goodput: saturated rate")
    env = _policy_env(plan, "fixed", run.args.broker)
    max_rate = saturated_rate(run, "max", run.args.partitions, plan.max_events, env)
    run.bar.write(f"goodput: saturated rate {max_rate} events/s (fixed, {plan.max_batch_size} / "
                  f"{plan.max_batch_wait_ms} ms)")  # fmt: skip
    plan_traces = traces(plan, max_rate)
    policies = list(run.args.policies or default_policies(run.s))
    rows: dict[str, dict[str, Any]] = {policy: {} for policy in policies}
    with ExitStack() as stack:
        running = {p: stack.enter_context(run.processor(_topics(run, _slug(p), run.args.partitions), _slug(p),
                                                         _policy_env(plan, p, run.args.broker)))
                   for p in policies}  # fmt: skip
        for policy in policies:
            warm = poisson_trace(max_rate / 2, max(10, round(max_rate / 2 * plan.warm_up_s)), np.random.default_rng(1))
            _replay(run, running[policy], f"{_slug(policy)}-warm", warm)
        # Policies take turns, a slice of a trace each, in a rotating order: on a shared machine, load that
        # comes and goes then meets every policy alike instead of whichever happened to run last.
        turn = 0
        for name, (_, offsets) in plan_traces.items():
            parts: dict[str, list[dict[str, Any]]] = {p: [] for p in policies}
            for chunk in np.array_split(offsets, plan.chunks):
                for policy in policies[turn % len(policies) :] + policies[: turn % len(policies)]:
                    run.bar.set_description(f"goodput {policy}: {name}")
                    parts[policy].append(
                        _measure(run, running[policy], f"{_slug(policy)}-{name}-{turn}", chunk - chunk[0])
                    )
                turn += 1
            for policy in policies:
                rows[policy][name] = _row(parts[policy], plan_traces[name], plan)
        for policy in policies:
            gauges = scrape_gauges(running[policy].proc, ("deepfake_batch_limit", "deepfake_batch_wait_seconds"))
            rows[policy]["final"] = {k.removeprefix("deepfake_"): v for k, v in gauges.items()}
            run.bar.write(
                f"goodput {policy}: "
                + ", ".join(
                    f"{n} {r['goodput_per_s']}/s p99 {r['p99_ms']} ms" for n, r in rows[policy].items() if n != "final"
                )
            )
    # Measured again at the end: on a shared machine the rate the loads were set from may not have held.
    after = saturated_rate(run, "maxafter", run.args.partitions, plan.max_events, env)
    run.bar.write(f"goodput: saturated rate at the end {after} events/s")
    run.bar.update(1)
    return {"plan": asdict(plan), "max_images_per_s": max_rate, "max_images_per_s_after": after,
            "traces": {n: {"mean_rate_per_s": round(r, 2), "events": len(o), "seconds": round(_span(r, o), 2)}
                       for n, (r, o) in plan_traces.items()},
            "policies": rows}  # fmt: skip


def _span(rate: float, offsets: np.ndarray) -> float:
    return float(offsets[-1]) + 1.0 / rate


def _replay(run: KafkaRun, running: Running, prefix: str, offsets: np.ndarray) -> dict[str, Any]:
    from devtools.produce import send_trace

    sent = send_trace(run.producer, running.topic, relabelled(run.pool, len(offsets), prefix), offsets.tolist())
    timeout = max(120.0, 4 * float(offsets[-1]) + 60.0)
    outputs = wait_for_outputs(running.collector, prefix + "-", len(offsets), running.proc, timeout)
    return {"sent": sent, "outputs": outputs}


def _batch_totals(running: Running) -> tuple[float, float]:
    samples = {s.name: float(s.value) for s in metric_samples(running.proc)
               if s.name in ("deepfake_batch_size_sum", "deepfake_batch_size_count")}  # fmt: skip
    return samples.get("deepfake_batch_size_sum", 0.0), samples.get("deepfake_batch_size_count", 0.0)


def _measure(run: KafkaRun, running: Running, prefix: str, offsets: np.ndarray) -> dict[str, Any]:
    """Replay one slice of a trace; its latencies (output − input Kafka timestamp), batches and sender lag."""
    rows_before, batches_before = _batch_totals(running)
    replay = _replay(run, running, prefix, offsets)
    rows_after, batches_after = _batch_totals(running)
    scored = [o for o in replay["outputs"] if not o.dead_letter]
    stamps = input_timestamps(run.s.bootstrap_servers, running.topic, run.args.partitions,
                              {(o.partition, o.offset) for o in scored})  # fmt: skip
    latencies = [float(o.timestamp_ms - stamps[(o.partition, o.offset)]) for o in scored
                 if (o.partition, o.offset) in stamps]  # fmt: skip
    splits = [latency_split(o, stamps[(o.partition, o.offset)]) for o in scored if (o.partition, o.offset) in stamps]
    return {"latencies": latencies, "splits": splits, "dead_letters": len(replay["outputs"]) - len(scored),
            "events": len(offsets),
            "rows": rows_after - rows_before, "batches": batches_after - batches_before,
            "late_p99_ms": replay["sent"]["late_p99_ms"]}  # fmt: skip


SPLIT = ("before the processor", "decode queue", "decode", "batcher + inference", "ordering + produce")


def latency_split(output: Output, input_ms: int) -> tuple[float, ...]:
    """One result's end-to-end latency in the SPLIT parts (ms), from its Kafka timestamps and its timings.

    Before the processor: the input's Kafka timestamp to the processor's poll (producer, broker, fetch). Inside
    it, from the result's timings_ms: waiting for a decode worker, decoding, then batcher and inference. After
    it: the result built to the output's Kafka timestamp (held for offset order, produced). One host, one clock.
    """
    t = output.timings_ms or {}
    polled = output.first_poll_ms or float(input_ms)
    inside = t.get("total", 0.0)
    rest = inside - t.get("queue", 0.0) - t.get("decode", 0.0)
    return (polled - input_ms, t.get("queue", 0.0), t.get("decode", 0.0), rest,
            output.timestamp_ms - (polled + inside))  # fmt: skip


def slowest_split(latencies: list[float], splits: list[tuple[float, ...]], share: float = 0.01) -> dict[str, float]:
    """Where the slowest `share` of events (those at or past the p99) spent their time: mean ms per SPLIT part."""
    if not latencies:
        return {}
    cut = float(np.percentile(latencies, 100 * (1 - share)))
    tail = np.array([s for ms, s in zip(latencies, splits, strict=True) if ms >= cut], dtype=np.float64)
    return {name: round(float(v), 1) for name, v in zip(SPLIT, tail.mean(axis=0), strict=True)}


def _row(parts: list[dict[str, Any]], trace: tuple[float, np.ndarray], plan: GoodputPlan) -> dict[str, Any]:
    """One (policy, trace) cell from its slices: goodput over the whole trace's duration, percentiles of all."""
    rate, offsets = trace
    latencies = [ms for part in parts for ms in part["latencies"]]
    # Counted per slice: the policies take turns slice by slice, so slice k of one policy ran next to slice k of
    # the others, and a slow spell of a shared machine shows as one slice instead of blurring a whole cell.
    in_time = [sum(1 for ms in part["latencies"] if ms <= plan.latency_target_ms) for part in parts]
    within = sum(in_time)
    sliced = [n / max(1, part["events"]) for n, part in zip(in_time, parts, strict=True)]
    seconds = _span(rate, offsets)
    rows, batches = sum(p["rows"] for p in parts), sum(p["batches"] for p in parts)
    return {"offered_per_s": round(len(offsets) / seconds, 2), "events": len(latencies),
            "dead_letters": sum(p["dead_letters"] for p in parts), "within_slo": within,
            "goodput_per_s": round(within / seconds, 2), "within_fraction": round(within / max(1, len(offsets)), 4),
            **latency_percentiles(latencies or [0.0]), "max_ms": round(max(latencies or [0.0]), 2),
            "p99_split_ms": slowest_split(latencies, [s for part in parts for s in part["splits"]]),
            "mean_batch_size": round(rows / batches, 2) if batches else None,
            "slices_within_fraction": [round(f, 4) for f in sliced],
            "producer_late_p99_ms": max(p["late_p99_ms"] for p in parts)}  # fmt: skip
