"""Bench stage runners: the in-process stages (decode, model, pipeline) and the Kafka ones (baseline, e2e, latency).

`processor.bench` parses the command line and writes the reports; this module runs the measurements and
fills the result dict. The Kafka stages start the embedded broker and the processor subprocess themselves
and stop both by PID whatever happens.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from models.loader import resolve_model
from processor import bench_inproc as inproc
from processor.bench_e2e import (
    CpuWindow,
    ProcessorProcess,
    ResourceSampler,
    e2e_run,
    latency_percentiles,
    processor_env,
    scrape_metrics,
    timing_summary,
    wait_for_outputs,
)
from processor.bench_kafka import NaiveBaseline, OutputCollector, input_timestamps
from processor.bench_report import model_only_best
from processor.bench_workload import iter_events
from processor.settings import Settings, Variant

LOAD_PERCENTS = (25, 50, 75)


@dataclass(frozen=True, slots=True)
class Durations:
    """Seconds each stage runs for (at least); a Kafka stage also sends at least a few batches' worth."""

    decode_s: float = 5.0
    model_s: float = 1.5
    pipeline_s: float = 10.0
    baseline_s: float = 10.0
    e2e_s: float = 20.0
    latency_s: float = 10.0


QUICK = Durations(0.5, 0.1, 1.0, 1.5, 2.0, 1.5)
MIN_LATENCY_EVENTS = 10


def parse_sizes(text: str) -> list[tuple[int, int]]:
    pairs = [part.strip().lower().partition("x") for part in text.split(",") if part.strip()]
    return [(int(w), int(h)) for w, _, h in pairs]


def run_inprocess(todo: list[str], settings: Settings, variants: list[str], events: list[Any], d: Durations,
                   result: dict[str, Any], bar: Any, args: argparse.Namespace) -> Settings:  # fmt: skip
    """decode, model, pipeline; returns the settings with the variant the processor will serve."""
    if "decode" in todo:
        bar.set_description("decode only")
        record(result, "decode_only", inproc.decode_only(settings, events, d.decode_s), bar)
    if "model" in todo:
        _stage_model(settings, variants, d, result, bar, args.batch_sizes)
    settings = _served(settings, result, args)
    if "pipeline" in todo:
        bar.set_description("pipeline ceiling")
        run = inproc.pipeline_ceiling(settings, events, d.pipeline_s)
        result["extra"]["pipeline_mean_batch_size"] = round((run.extra or {}).get("mean_batch_size", 0.0), 2)
        result["settings"]["provider"] = run.provider
        record(result, "pipeline_ceiling", run, bar)
    return settings


def record(result: dict[str, Any], stage: str, run: inproc.StageRun, bar: Any) -> None:
    """Store a stage's images/s, and its CPU cost per image and cores used (stable on a shared machine)."""
    result[f"{stage}_images_per_s"] = round(run.images_per_s, 2)
    x = result["extra"]
    x.setdefault("cpu_ms_per_image", {})[stage] = round(run.cpu_ms_per_image, 2)
    x.setdefault("cores_used", {})[stage] = round(run.cpu_s / run.seconds, 2) if run.seconds else None
    bar.write(f"{stage.replace('_', ' ')}: {result[f'{stage}_images_per_s']} images/s ({run.images} images in "
              f"{run.seconds:.1f} s, {run.cpu_ms_per_image:.1f} CPU ms per image)")  # fmt: skip
    bar.update(1)


def _stage_model(settings: Settings, variants: list[str], d: Durations, result: dict[str, Any], bar: Any,
                 batch_sizes: list[int]) -> None:  # fmt: skip
    ms: dict[str, dict[str, float]] = {}
    cpu: dict[str, dict[str, float]] = {}
    for variant in variants:
        bar.set_description(f"model only ({variant})")
        timed, result["settings"]["provider"] = inproc.model_only(settings, variant, batch_sizes, d.model_s)
        ms[variant] = {str(b): round(wall, 3) for b, (wall, _) in timed.items()}
        cpu[variant] = {str(b): round(cpu_ms / b, 3) for b, (_, cpu_ms) in timed.items()}
    result["extra"]["model_only_ms_per_batch"] = ms
    result["extra"]["model_only_cpu_ms_per_image"] = cpu
    rates = {v: {b: round(int(b) * 1000.0 / t, 2) for b, t in r.items()} for v, r in ms.items()}
    result["model_only_images_per_s"] = rates
    variant, batch, rate = model_only_best(rates) or ("", "", 0.0)
    bar.write(f"model only: best {rate} images/s ({variant} at batch {batch})")
    bar.update(1)


def _served(settings: Settings, result: dict[str, Any], args: argparse.Namespace) -> Settings:
    """With --variants, serve the one fastest at MAX_BATCH_SIZE (else the first); without, `auto`."""
    rates = result.get("model_only_images_per_s") or {}
    variant = settings.model_variant.value
    if args.variants and rates:
        at = str(settings.max_batch_size)
        variant = max(rates, key=lambda v: rates[v].get(at, max(rates[v].values())))
    settings = settings.model_copy(update={"model_variant": Variant(variant)})
    model = resolve_model(settings.model_dir, variant)
    result["settings"]["served_variant"] = model.variant
    return settings


def run_kafka(todo: list[str], settings: Settings, d: Durations, result: dict[str, Any], bar: Any,
               args: argparse.Namespace) -> None:  # fmt: skip
    """baseline, e2e, latency against an embedded broker the bench starts and stops (by PID)."""
    from processor.broker import EmbeddedBroker, create_topics
    from processor.produce import make_producer, send

    workdir = Path(tempfile.mkdtemp(prefix="dfp-bench-"))
    uid = uuid.uuid4().hex[:8]
    t = {k: f"bench-{k}-{uid}" for k in ("backlog", "paced", "out", "dlq", "base-out", "base-dlq")}
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        create_topics(broker.bootstrap, list(t.values()), partitions=args.partitions)
        s = settings.model_copy(update={"bootstrap_servers": broker.bootstrap})
        n = args.e2e_events or max(2 * s.max_batch_size, round(d.e2e_s * _estimate(result)))
        result["settings"]["e2e_events"] = n
        if {"baseline", "e2e"} & set(todo):
            bar.set_description(f"producing {n} events")
            events = iter_events(n, parse_sizes(args.sizes), args.formats, prefix="e2e")
            send(make_producer(broker.bootstrap), t["backlog"], events, total=n, progress=not args.no_progress)
        if "baseline" in todo:
            bar.set_description("baseline")
            run = NaiveBaseline(s, t["base-out"], t["base-dlq"]).run(t["backlog"], args.partitions, n, d.baseline_s)
            record(result, "baseline", run, bar)
        if {"e2e", "latency"} & set(todo):
            _run_processor(todo, s, t, n, d, result, bar, args, workdir, broker.pid)
    shutil.rmtree(workdir, ignore_errors=True)


def _estimate(result: dict[str, Any]) -> float:
    """Images/s to size the backlog by: the pipeline ceiling, else the slower of decode and model, else 50."""
    if result.get("pipeline_ceiling_images_per_s"):
        return float(result["pipeline_ceiling_images_per_s"])
    best = model_only_best(result.get("model_only_images_per_s"))
    known = [r for r in (result.get("decode_only_images_per_s"), best[2] if best else None) if r]
    return float(min(known)) if known else 50.0


def _run_processor(todo: list[str], s: Settings, t: dict[str, str], n: int, d: Durations, result: dict[str, Any],
                   bar: Any, args: argparse.Namespace, workdir: Path, broker_pid: int | None) -> None:  # fmt: skip
    from processor.broker import free_port

    topic = t["backlog"] if "e2e" in todo else t["paced"]
    port = free_port()
    env = processor_env(s, (topic, t["out"], t["dlq"]), f"bench-{t['out']}", port)
    proc = ProcessorProcess(env, workdir / "processor.log", port)
    collector = OutputCollector(s.bootstrap_servers, [t["out"], t["dlq"]], args.partitions)
    bar.set_description("starting the processor")
    proc.start()
    assert proc.proc is not None
    sampler = ResourceSampler(proc.proc.pid).start()
    try:
        proc.wait_ready()
        if "e2e" in todo:
            _stage_e2e(proc, collector, sampler, n, result, bar, broker_pid)
        if "latency" in todo:
            _stage_latency(proc, collector, s.bootstrap_servers, topic, d, result, bar, args)
    finally:
        code = proc.stop()
        sampler.stop()
        collector.close()
        if code not in (0, None):
            print(f"bench: the processor exited with {code}; log: {proc.log_path}\n{proc.log_tail()}")
    result["peak_rss_mb"] = round(sampler.peak_rss_mb, 1)
    result["gpu_memory_mb"] = None if sampler.peak_gpu_mb is None else round(sampler.peak_gpu_mb, 1)


def _stage_e2e(proc: ProcessorProcess, collector: OutputCollector, sampler: ResourceSampler, n: int,
               result: dict[str, Any], bar: Any, broker_pid: int | None) -> None:  # fmt: skip
    import psutil

    bar.set_description("end to end")
    probes = {"processor": sampler.cpu_seconds}
    if broker_pid is not None:
        broker = psutil.Process(broker_pid)
        probes["broker"] = lambda: float(sum(broker.cpu_times()[:2]))
    cpu = CpuWindow(probes)
    with progress(n, bar.disable, desc="e2e outputs", unit="ev", leave=False) as inner:
        timeout = max(180.0, 10.0 * n / _estimate(result))
        outputs = wait_for_outputs(collector, "e2e-", n, proc, timeout, lambda k: inner.update(k - inner.n))
    used = cpu.used()
    run = replace(e2e_run(outputs), cpu_s=used["processor"])
    result["extra"].update(e2e_seconds=round(run.seconds, 2), e2e_cpu_cores=cpu.cores(run.seconds),
                           result_timings_ms=timing_summary(outputs), processor_metrics=scrape_metrics(proc),
                           e2e_dead_letters=sum(o.dead_letter for o in outputs))  # fmt: skip
    record(result, "e2e", run, bar)


def _stage_latency(proc: ProcessorProcess, collector: OutputCollector, bootstrap: str, topic: str, d: Durations,
                   result: dict[str, Any], bar: Any, args: argparse.Namespace) -> None:  # fmt: skip
    reference = result.get("e2e_images_per_s") or _estimate(result)
    result["latency"] = {}
    for pct in LOAD_PERCENTS:
        rate = reference * pct / 100.0
        bar.set_description(f"latency at {pct} % ({rate:.1f}/s)")
        row = _latency_at(proc, collector, bootstrap, topic, rate, max(MIN_LATENCY_EVENTS, round(rate * d.latency_s)),
                          f"lat{pct}", args)  # fmt: skip
        result["latency"][str(pct)] = {"load_fraction": pct / 100.0, **row}
        bar.write(f"latency at {pct} %: p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms, p99 {row['p99_ms']} ms")
    bar.update(1)


def _latency_at(proc: ProcessorProcess, collector: OutputCollector, bootstrap: str, topic: str, rate: float,
                count: int, prefix: str, args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """Send `count` events paced at `rate`; output timestamp − input timestamp percentiles, and the split."""
    from processor.produce import make_producer, send

    events = iter_events(count, parse_sizes(args.sizes), args.formats, prefix=prefix)
    sent = send(make_producer(bootstrap), topic, events, rate=rate, total=count)
    outputs = wait_for_outputs(collector, prefix + "-", count, proc, max(120.0, 4 * count / rate))
    stamps = input_timestamps(bootstrap, topic, args.partitions, {(o.partition, o.offset) for o in outputs})
    latencies = [float(o.timestamp_ms - stamps[(o.partition, o.offset)]) for o in outputs
                 if (o.partition, o.offset) in stamps]  # fmt: skip
    inside = timing_summary(outputs)
    # timings_ms.total runs from the poll that returned the event to its result: the rest is Kafka's share.
    return {"offered_per_s": round(rate, 2), "sent_per_s": sent["events_per_s"], "events": len(latencies),
            **latency_percentiles(latencies), "processor_total_p50_ms": inside.get("total", {}).get("p50"),
            "processor_queue_p50_ms": inside.get("queue", {}).get("p50")}  # fmt: skip


class _NoBar:
    """Stands in for tqdm when it is missing or progress is off."""

    disable = True
    n = 0

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, k: int = 1) -> None:
        self.n += k

    def set_description(self, text: str) -> None:
        return None

    def write(self, text: str) -> None:
        print(text)


def progress(total: int, disabled: bool, desc: str = "bench", unit: str = "stage", leave: bool = True) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, disable=disabled, file=sys.stderr)
