"""End-to-end bench stages: the real processor as a subprocess against the embedded broker.

`e2e_images_per_s` runs from the first poll (min over results of processed_at − timings_ms.total) to the
last output's Kafka timestamp; latency is output timestamp − input timestamp under a paced producer. The
processor's RSS (and GPU memory when NVML sees a GPU) is sampled the whole time it runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.inproc import StageRun
from bench.kafka import Output, OutputCollector
from devtools.runner import ProcessorProcess, parse_metrics  # bench.stages imports ProcessorProcess from here
from devtools.runner import processor_env as runner_env
from processor.settings import MiB, Settings
from processor.telemetry.gpu import device_handle, load_nvml, read_memory, visible_devices


def processor_env(settings: Settings, topics: tuple[str, str, str], group: str, http_port: int) -> dict[str, str]:
    """The subprocess's environment (devtools.runner.processor_env) with the bench's settings on top."""
    values = {
        "HTTP_PORT": str(http_port), "MODEL_VARIANT": settings.model_variant.value,
        "PROVIDERS": settings.providers.value, "DECODE_WORKERS": str(settings.decode_workers),
        "MAX_BATCH_SIZE": str(settings.max_batch_size), "MAX_BATCH_WAIT_MS": str(settings.max_batch_wait_ms),
        "MAX_IN_FLIGHT": str(settings.max_in_flight), "INFERENCE_THREADS": str(settings.inference_threads),
    }  # fmt: skip
    if settings.model_dir is not None:
        values["MODEL_DIR"] = str(settings.model_dir)
    return runner_env(settings.bootstrap_servers, *topics, group, **values)


class ResourceSampler:
    """Samples a process's RSS (psutil) and GPU memory (NVML, when importable and a GPU answers).

    `peak_gpu_mb` is the process's own GPU memory where NVML lists the process, None where it does not (inside
    a container NVML usually cannot see it): unknown is never reported as 0. `peak_device_gpu_mb` is the device's
    memory in use (nvmlDeviceGetMemoryInfo), which NVML always knows but which counts every process on the GPU.
    """

    def __init__(self, pid: int, *siblings: int, interval_s: float = 0.2) -> None:
        import psutil  # the [bench] extra

        self._process = psutil.Process(pid)
        self._siblings = [psutil.Process(p) for p in siblings]  # other instances: their CPU counts too
        self._interval_s = interval_s
        self._nvml = load_nvml()
        self._handle = device_handle(self._nvml, visible_devices()) if self._nvml is not None else None
        self.peak_rss_mb = 0.0
        self.peak_gpu_mb: float | None = None
        self.peak_device_gpu_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def start(self) -> ResourceSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the process and its sibling instances so far."""
        return float(sum(sum(p.cpu_times()[:2]) for p in (self._process, *self._siblings)))

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.peak_rss_mb = max(self.peak_rss_mb, self._process.memory_info().rss / MiB)
            except Exception:  # the process ended between samples; the last peak stands
                return
            self._sample_gpu()

    def _sample_gpu(self) -> None:
        if self._nvml is None:
            return
        try:
            memory = read_memory(self._nvml, self._handle, self._process.pid)
        except Exception:  # NVMLError (GPU lost): keep the peaks so far
            return
        self.peak_device_gpu_mb = max(self.peak_device_gpu_mb or 0.0, memory.device_used_mb)
        if memory.process_mb is not None:
            self.peak_gpu_mb = max(self.peak_gpu_mb or 0.0, memory.process_mb)


def wait_for_outputs(collector: OutputCollector, prefix: str, expected: int, proc: ProcessorProcess,
                     timeout_s: float, progress: Callable[[int], None] | None = None) -> list[Output]:  # fmt: skip
    """Read outputs until `expected` events with ids starting `prefix` have one; fail if the processor dies."""
    deadline = time.monotonic() + timeout_s
    while True:
        collector.pump(0.25)
        got = collector.with_prefix(prefix)
        if progress is not None:
            progress(len(got))
        if len(got) >= expected:
            return got
        if not proc.alive:
            raise RuntimeError(f"processor exited with {len(got)}/{expected} outputs:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(got)}/{expected} outputs after {timeout_s:.0f} s:\n{proc.log_tail()}")


def e2e_run(outputs: list[Output]) -> StageRun:
    """First poll (earliest processed_at − total) to the last output's timestamp."""
    starts = [o.first_poll_ms for o in outputs if o.first_poll_ms is not None]
    if not starts:
        raise RuntimeError("no scored results among the outputs: every event was dead-lettered")
    seconds = (max(o.timestamp_ms for o in outputs) - min(starts)) / 1000.0
    return StageRun(len(outputs), seconds)


def timing_summary(outputs: list[Output]) -> dict[str, dict[str, float]]:
    """Mean and p50/p95 of each timings_ms stage over the results."""
    rows = [o.timings_ms for o in outputs if o.timings_ms]
    stages = sorted({k for r in rows for k in r})
    out: dict[str, dict[str, float]] = {}
    for stage in stages:
        values = np.array([r[stage] for r in rows if stage in r], dtype=np.float64)
        out[stage] = {"mean": round(float(values.mean()), 3), "p50": round(float(np.percentile(values, 50)), 3),
                      "p95": round(float(np.percentile(values, 95)), 3)}  # fmt: skip
    return out


def latency_percentiles(latencies_ms: list[float]) -> dict[str, float]:
    """p50, p95 and p99 of the latencies (ms), rounded to 0.01 ms."""
    values = np.array(latencies_ms, dtype=np.float64)
    return {f"p{q}_ms": round(float(np.percentile(values, q)), 2) for q in (50, 95, 99)}


def metric_samples(proc: ProcessorProcess) -> list[Any]:
    """Every sample on the processor's /metrics (prometheus_client Sample tuples); [] if it does not answer 200."""
    status, body = proc.get("/metrics", 5.0)
    return parse_metrics(body.decode()) if status == 200 else []


def scrape_gauges(proc: ProcessorProcess, names: tuple[str, ...]) -> dict[str, float]:
    """The current value of each named gauge (absent ones left out)."""
    return {s.name: float(s.value) for s in metric_samples(proc) if s.name in names}


def scrape_metrics(proc: ProcessorProcess) -> dict[str, float]:
    """Mean per-stage latency (ms) and mean batch size from the processor's /metrics histograms."""
    sums: dict[str, float] = {}
    for sample in metric_samples(proc):
        if sample.name.endswith(("_sum", "_count")):
            key = sample.name + ":" + sample.labels.get("stage", "")
            sums[key] = sums.get(key, 0.0) + sample.value
    out: dict[str, float] = {}
    for key, total in sums.items():
        name, stage = key.split(":")
        count = sums.get(name.removesuffix("_sum") + "_count:" + stage, 0.0)
        if name.endswith("_sum") and count:
            scale = 1000.0 if "seconds" in name else 1.0
            out[f"{stage}_mean_ms" if stage else name.removesuffix("_sum") + "_mean"] = round(total / count * scale, 3)
    return out


@dataclass
class CpuWindow:
    """CPU seconds a set of processes used over a wall-clock window, as average cores busy."""

    probes: dict[str, Callable[[], float]]
    started: float = field(default_factory=time.monotonic)
    base: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base = {name: probe() for name, probe in self.probes.items()}

    def used(self) -> dict[str, float]:
        """CPU seconds each process used since the window opened."""
        return {name: probe() - self.base[name] for name, probe in self.probes.items()}

    def cores(self, seconds: float | None = None) -> dict[str, float]:
        """Average cores busy over `seconds` (default: since the window opened)."""
        wall = max(1e-9, seconds or time.monotonic() - self.started)
        return {name: round((probe() - self.base[name]) / wall, 2) for name, probe in self.probes.items()}
