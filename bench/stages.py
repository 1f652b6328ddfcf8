"""Bench stage runners: the in-process stages (decode, model, pipeline) and the Kafka ones (baseline, e2e, latency).

`bench.cli` parses the command line and writes the reports; this module runs the measurements and
fills the result dict. The Kafka stages start the embedded broker and the processor subprocess themselves
and stop both by PID whatever happens.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from bench import inproc as inproc
from bench.e2e import (
    CpuWindow,
    ProcessorProcess,
    ResourceSampler,
    e2e_run,
    latency_percentiles,
    processor_env,
    scrape_gauges,
    scrape_metrics,
    timing_summary,
    wait_for_outputs,
)
from bench.kafka import NaiveBaseline, OutputCollector, input_timestamps
from bench.report import model_only_best
from bench.workload import relabelled
from devtools.samples import SampleEvent
from models.loader import resolve_model
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
    slo_s: float = 10.0  # saturated run of each SLO configuration
    warm_up_s: float = 3.0  # paced events sent but not counted before an SLO latency measurement


QUICK = Durations(0.5, 0.1, 1.0, 1.5, 2.0, 1.5, 1.0, 0.5)
MIN_LATENCY_EVENTS = 10


def run_inprocess(todo: list[str], settings: Settings, variants: list[str], events: list[Any], d: Durations,
                   result: dict[str, Any], bar: Any, args: argparse.Namespace) -> Settings:  # fmt: skip
    """decode, model, pipeline, bare; returns the settings with the variant the processor will serve."""
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
    if "bare" in todo:
        bar.set_description("bare ceiling")
        record(result, "bare_ceiling", inproc.bare_ceiling(settings, events, d.pipeline_s), bar)
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


def run_kafka(todo: list[str], settings: Settings, pool: list[SampleEvent], d: Durations, result: dict[str, Any],
              bar: Any, args: argparse.Namespace) -> None:  # fmt: skip
    """baseline, e2e, latency, slo against an embedded broker the bench starts and stops (by PID)."""
    from devtools.broker import EmbeddedBroker, create_topics

    workdir = Path(tempfile.mkdtemp(prefix="dfp-bench-"))
    uid = uuid.uuid4().hex[:8]
    t = {k: f"bench-{k}-{uid}" for k in ("backlog", "paced", "out", "dlq", "base-out", "base-dlq")}
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        create_topics(broker.bootstrap, list(t.values()), partitions=args.partitions)
        s = settings.model_copy(update={"bootstrap_servers": broker.bootstrap})
        n = args.e2e_events or max(2 * s.max_batch_size, round(d.e2e_s * _estimate(result)))
        result["settings"]["e2e_events"] = n
        run = KafkaRun(s, pool, d, result, bar, args, workdir, broker.pid, uid)
        if {"baseline", "e2e"} & set(todo):
            run.backlog(t["backlog"], n, "e2e")
        if "baseline" in todo:
            bar.set_description("baseline")
            base = NaiveBaseline(s, t["base-out"], t["base-dlq"]).run(t["backlog"], args.partitions, n, d.baseline_s)
            record(result, "baseline", base, bar)
        if {"e2e", "latency"} & set(todo):
            # Without e2e, latency runs on an empty topic: it must not queue behind the baseline's backlog.
            source = t["backlog"] if "e2e" in todo else t["paced"]
            run.e2e_and_latency(todo, (source, t["out"], t["dlq"]), n)
        if "slo" in todo:
            per_config = [f"{t[k]}-{c}" for c in SLO_CONFIGS for k in ("backlog", "out", "dlq")]
            create_topics(broker.bootstrap, per_config, partitions=args.partitions)
            run_slo(run, t, n)
    shutil.rmtree(workdir, ignore_errors=True)


def _processor_cpus(args: argparse.Namespace) -> frozenset[int] | None:
    """The CPUs a processor subprocess is pinned to (--processor-cpus), else None."""
    cpus = getattr(args, "processor_cpus", None)
    return frozenset(cpus) if cpus else None


def _estimate(result: dict[str, Any]) -> float:
    """Images/s to size the backlog by: the pipeline ceiling, else the slower of decode and model, else 50."""
    if result.get("pipeline_ceiling_images_per_s"):
        return float(result["pipeline_ceiling_images_per_s"])
    best = model_only_best(result.get("model_only_images_per_s"))
    known = [r for r in (result.get("decode_only_images_per_s"), best[2] if best else None) if r]
    return float(min(known)) if known else 50.0


@dataclass
class KafkaRun:
    """What the Kafka stages share: settings, the event pool, the broker, and where results go."""

    s: Settings
    pool: list[SampleEvent]
    d: Durations
    result: dict[str, Any]
    bar: Any
    args: argparse.Namespace
    workdir: Path
    broker_pid: int | None
    uid: str

    @functools.cached_property
    def producer(self) -> Producer:
        """One producer for every stage: a new one spends its first ~0.5 s connecting and getting an
        idempotent producer id, which a paced run would count as latency of its first events."""
        from devtools.produce import make_producer

        producer = make_producer(self.s.bootstrap_servers)
        producer.list_topics(timeout=10)
        return producer

    def backlog(self, topic: str, n: int, prefix: str) -> None:
        """Produce `n` events of the pool (ids `<prefix>-<n>`) to `topic` as fast as the producer goes."""
        from devtools.produce import send

        self.bar.set_description(f"producing {n} events")
        send(self.producer, topic, relabelled(self.pool, n, prefix), total=n, progress=not self.args.no_progress)

    @contextmanager
    def processor(self, topics: tuple[str, str, str], name: str,
                  overrides: dict[str, str] | None = None) -> Iterator[Running]:  # fmt: skip
        """A processor subprocess on `topics` (input, output, DLQ) with an output reader; stopped by PID."""
        from devtools.broker import free_port

        procs = []
        cpus = _processor_cpus(self.args)
        for i in range(getattr(self.args, "instances", 1)):  # members of one consumer group, one GPU shared
            port = free_port()
            env = {**processor_env(self.s, topics, f"bench-{name}-{self.uid}", port), **(overrides or {})}
            log = self.workdir / f"processor-{name}{'-' + str(i) if i else ''}.log"
            procs.append(ProcessorProcess(env, log, port, cpus=cpus))
        collector = OutputCollector(self.s.bootstrap_servers, topics[1:], self.args.partitions)
        self.bar.set_description(f"starting the processor ({name})")
        for proc in procs:
            proc.start()
        sampler = ResourceSampler(*(proc.pid for proc in procs)).start()
        try:
            for proc in procs:
                proc.wait_ready()
            if cpus:  # what the kernel says the ready processor runs on, for the record
                self.result["extra"]["processor_affinity"] = sorted(os.sched_getaffinity(procs[0].pid))
            yield Running(procs[0], collector, sampler, topics[0])
        finally:
            codes = [proc.stop() for proc in procs]
            sampler.stop()
            collector.close()
            for proc, code in zip(procs, codes, strict=True):
                if code not in (0, None):
                    print(f"bench: the processor exited with {code}; log: {proc.log_path}\n{proc.log_tail()}")

    def e2e_and_latency(self, todo: list[str], topics: tuple[str, str, str], n: int) -> None:
        """The e2e drain and the paced latency levels, through one processor; peak RSS and GPU memory."""
        with self.processor(topics, "main") as running:
            if "e2e" in todo:
                _stage_e2e(running, n, self.result, self.bar, self.broker_pid)
            if "latency" in todo:
                reference = self.result.get("e2e_images_per_s") or _estimate(self.result)
                self.result["latency"] = {}
                for pct in LOAD_PERCENTS:
                    row = self.latency_at(running, reference * pct / 100.0, f"lat{pct}")
                    self.result["latency"][str(pct)] = {"load_fraction": pct / 100.0, **row}
                self.bar.update(1)
        self.result["peak_rss_mb"] = round(running.sampler.peak_rss_mb, 1)
        gpu = running.sampler.peak_gpu_mb
        self.result["gpu_memory_mb"] = None if gpu is None else round(gpu, 1)

    def latency_at(self, running: Running, rate: float, prefix: str, *, warm_up: bool = False) -> dict[str, Any]:
        """Send events paced at `rate`; output timestamp − input timestamp percentiles, and the split.

        With `warm_up`, the first `Durations.warm_up_s` of events (ids `<prefix>w-…`) are sent at the same
        rate but not counted: an adaptive batcher is measured in its steady state, not while it adapts.
        """
        from devtools.produce import send

        count = max(MIN_LATENCY_EVENTS, round(rate * self.d.latency_s))
        warm = round(rate * self.d.warm_up_s) if warm_up else 0
        self.bar.set_description(f"latency {prefix} ({rate:.1f}/s)")
        bootstrap, partitions = self.s.bootstrap_servers, self.args.partitions
        events = itertools.chain(relabelled(self.pool, warm, prefix + "w"), relabelled(self.pool, count, prefix))
        cpu = cpu_window(running, self.broker_pid, bench=True)
        sent = send(self.producer, running.topic, events, rate=rate, total=warm + count)
        # Cores over the sending window: on a small box the load generator and broker share the processor's.
        cores = cpu.cores()
        outputs = wait_for_outputs(running.collector, prefix + "-", count, running.proc, max(120.0, 4 * count / rate))
        stamps = input_timestamps(bootstrap, running.topic, partitions, {(o.partition, o.offset) for o in outputs})
        latencies = [float(o.timestamp_ms - stamps[(o.partition, o.offset)]) for o in outputs
                     if (o.partition, o.offset) in stamps]  # fmt: skip
        inside = timing_summary(outputs)
        row = {"offered_per_s": round(rate, 2), "sent_per_s": sent["events_per_s"], "events": len(latencies),
               **latency_percentiles(latencies), "processor_total_p50_ms": inside.get("total", {}).get("p50"),
               "processor_queue_p50_ms": inside.get("queue", {}).get("p50"), "cores": cores}  # fmt: skip
        self.bar.write(f"latency {prefix}: p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms, p99 {row['p99_ms']} ms")
        return row


@dataclass(frozen=True, slots=True)
class Running:
    """A started processor with its output reader, resource sampler and input topic."""

    proc: ProcessorProcess
    collector: OutputCollector
    sampler: ResourceSampler
    topic: str


def cpu_window(running: Running, broker_pid: int | None, *, bench: bool = False) -> CpuWindow:
    """CPU seconds of the processor, the embedded broker and (with `bench`) this process, from now on."""
    import psutil

    probes = {"processor": running.sampler.cpu_seconds}
    if broker_pid is not None:
        broker = psutil.Process(broker_pid)
        probes["broker"] = lambda: float(sum(broker.cpu_times()[:2]))
    if bench:
        me = psutil.Process()
        probes["bench (producer, reader)"] = lambda: float(sum(me.cpu_times()[:2]))
        # Cores no process used: a processor short of CPU while cores sit idle is stalling, not starved.
        probes["idle"] = lambda: float(psutil.cpu_times().idle)
    return CpuWindow(probes)


def _stage_e2e(running: Running, n: int, result: dict[str, Any], bar: Any, broker_pid: int | None) -> None:
    bar.set_description("end to end")
    cpu = cpu_window(running, broker_pid, bench=True)
    with progress(n, bar.disable, desc="e2e outputs", unit="ev", leave=False) as inner:
        timeout = max(180.0, 10.0 * n / _estimate(result))
        outputs = wait_for_outputs(running.collector, "e2e-", n, running.proc, timeout,
                                   lambda k: inner.update(k - inner.n))  # fmt: skip
    used = cpu.used()
    run = replace(e2e_run(outputs), cpu_s=used["processor"])
    result["extra"].update(e2e_seconds=round(run.seconds, 2), e2e_cpu_cores=cpu.cores(run.seconds),
                           result_timings_ms=timing_summary(outputs),
                           processor_metrics=scrape_metrics(running.proc),
                           e2e_dead_letters=sum(o.dead_letter for o in outputs))  # fmt: skip
    record(result, "e2e", run, bar)


SLO_CONFIGS = ("fixed", "slo")
SLO_LOADS = (50, 75)


def slo_plan(settings: Settings, args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """The SLO comparison's bounds and target: throughput-leaning bounds, and a p99 target under them.

    Both configurations get the same roomy bounds (a big batch and a long wait buy throughput); only one
    adapts them to the target. The default target is 2× the p99 the default settings reached at 25 % load
    (what the pipeline can do when nothing queues), at least 50 ms.
    """
    max_batch = args.slo_max_batch_size or 2 * settings.max_batch_size
    max_wait = args.slo_max_wait_ms or 10 * settings.max_batch_wait_ms
    target = args.latency_target_ms
    if not target:
        quiet = ((result.get("latency") or {}).get(str(LOAD_PERCENTS[0])) or {}).get("p99_ms")
        target = max(50.0, 2.0 * float(quiet)) if quiet else 250.0
    return {"max_batch_size": max_batch, "max_batch_wait_ms": max_wait, "latency_target_ms": round(target, 1)}


def run_slo(run: KafkaRun, t: dict[str, str], n: int) -> None:
    """Saturated throughput and p99 at 50/75 % load: roomy fixed settings vs the same bounds SLO-adaptive."""
    plan = slo_plan(run.s, run.args, run.result)
    reference = run.result.get("e2e_images_per_s") or _estimate(run.result)
    # Short of the e2e backlog, but a few batches' worth at the roomy bound even on a slow model.
    count = max(2 * plan["max_batch_size"], round(n * run.d.slo_s / max(run.d.e2e_s, 1e-9)))
    out: dict[str, Any] = {"plan": plan, "reference_images_per_s": reference, "configs": {}}
    for config in SLO_CONFIGS:
        overrides = {"DFP_MAX_BATCH_SIZE": str(plan["max_batch_size"]),
                     "DFP_MAX_BATCH_WAIT_MS": str(plan["max_batch_wait_ms"])}  # fmt: skip
        if config == "slo":
            overrides["DFP_LATENCY_TARGET_MS"] = str(plan["latency_target_ms"])
        topics = (f"{t['backlog']}-{config}", f"{t['out']}-{config}", f"{t['dlq']}-{config}")
        run.backlog(topics[0], count, f"{config}-sat")
        with run.processor(topics, config, overrides) as running:
            row = _slo_config(run, running, config, count, reference)
        out["configs"][config] = row
        run.bar.write(f"slo {config}: saturated {row['images_per_s']} images/s, "
                      + ", ".join(f"p99 at {k} % {v['p99_ms']} ms" for k, v in row["latency"].items()))  # fmt: skip
    run.result["slo"] = out
    run.bar.update(1)


def _slo_config(run: KafkaRun, running: Running, config: str, count: int, reference: float) -> dict[str, Any]:
    run.bar.set_description(f"slo {config}: saturated")
    outputs = wait_for_outputs(running.collector, f"{config}-sat-", count, running.proc,
                               max(180.0, 10.0 * count / reference))  # fmt: skip
    saturated = e2e_run(outputs)
    latency = {str(pct): run.latency_at(running, reference * pct / 100.0, f"{config}-lat{pct}", warm_up=True)
               for pct in SLO_LOADS}  # fmt: skip
    gauges = scrape_gauges(running.proc, ("deepfake_batch_limit", "deepfake_batch_wait_seconds"))
    return {"images_per_s": round(saturated.images_per_s, 2), "events": saturated.images, "latency": latency,
            "final_batch_limit": gauges.get("deepfake_batch_limit"),
            "final_batch_wait_ms": None if gauges.get("deepfake_batch_wait_seconds") is None
            else round(gauges["deepfake_batch_wait_seconds"] * 1000.0, 2),
            "mean_batch_size": scrape_metrics(running.proc).get("deepfake_batch_size_mean")}  # fmt: skip


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
    """A tqdm bar on stderr, or a stand-in that prints only `write` lines when tqdm is missing."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, disable=disabled, file=sys.stderr)
