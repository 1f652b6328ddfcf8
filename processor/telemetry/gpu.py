"""GPU metrics through NVML (nvidia-ml-py, the optional `[gpu]` extra): a poller thread feeding gauges and /health."""

from __future__ import annotations

import importlib
import logging
import os
import threading
from types import ModuleType
from typing import Any

from processor.settings import MiB
from processor.telemetry.health import Health, unknown_memory
from processor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 5.0


def load_nvml() -> ModuleType | None:
    """`pynvml`, initialised; None (with one INFO line) when the library, the driver or a device is missing."""
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        log.info("GPU metrics off: nvidia-ml-py is not installed (pip install 'deepfake-processor[gpu]')")
        return None
    try:
        nvml.nvmlInit()
        if nvml.nvmlDeviceGetCount() < 1:
            nvml.nvmlShutdown()
            log.info("GPU metrics off: NVML sees no device")
            return None
    except Exception as exc:  # pynvml raises NVMLError subclasses (no driver, no permission, ...)
        log.info("GPU metrics off: NVML is unavailable", extra={"error": str(exc)[:200]})
        return None
    return nvml


def device_handle(nvml: ModuleType, visible: str | None) -> Any:
    """The device CUDA calls 0. NVML ignores CUDA_VISIBLE_DEVICES, so map its first entry (index or UUID)."""
    first = (visible or "").split(",")[0].strip()
    if not first:
        return nvml.nvmlDeviceGetHandleByIndex(0)
    if first.isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(first))
    return nvml.nvmlDeviceGetHandleByUUID(first)


class GpuMonitor:
    """Polls one device every `interval_s` on a named daemon thread; `stop()` joins it and shuts NVML down."""

    def __init__(self, nvml: ModuleType, handle: Any, metrics: Metrics, health: Health,
                 interval_s: float = POLL_INTERVAL_S) -> None:  # fmt: skip
        self.nvml = nvml
        self.handle = handle
        self.metrics = metrics
        self.health = health
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="gpu-metrics", daemon=True)

    @classmethod
    def start_for(cls, gpu: bool, metrics: Metrics, health: Health) -> GpuMonitor | None:
        """Start polling when the session runs on a GPU provider and NVML answers; else None (nulls in /health)."""
        if not gpu:
            return None
        nvml = load_nvml()
        if nvml is None:
            return None
        try:
            # CUDA's own variable, not a DFP setting: it decides which physical device the session got.
            handle = device_handle(nvml, os.environ.get("CUDA_VISIBLE_DEVICES"))
        except Exception as exc:  # an NVMLError: a UUID or index NVML does not know
            log.info("GPU metrics off: cannot find the CUDA device in NVML", extra={"error": str(exc)[:200]})
            nvml.nvmlShutdown()
            return None
        monitor = cls(nvml, handle, metrics, health)
        monitor.poll_once()
        monitor._thread.start()
        return monitor

    @classmethod
    def follow(cls, current: GpuMonitor | None, gpu: bool, metrics: Metrics, health: Health) -> GpuMonitor | None:
        """The monitor for the model now serving: a hot swap between CPU and GPU starts or stops polling."""
        if gpu:
            return current if current is not None else cls.start_for(True, metrics, health)
        if current is not None:
            current.stop()
            health.memory = unknown_memory()
        return None

    def poll_once(self) -> None:
        """Read memory and utilisation once into the gauges and `health.memory`."""
        try:
            memory = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
        except Exception as exc:  # NVMLError (GPU lost, driver reset): keep the last values, say so once
            if not self._failing:
                log.warning("GPU metrics read failed", extra={"error": str(exc)[:200]})
            self._failing = True
            return
        self._failing = False
        used, total = int(memory.used), int(memory.total)
        self.metrics.gpu_memory_used.set(used)
        self.metrics.gpu_memory_total.set(total)
        utilization = self._utilization()
        if utilization is not None:
            self.metrics.gpu_utilization.set(utilization)
        # One assignment: readers on HTTP threads see the old dict or the new one, never a mix.
        self.health.memory = {
            "gpu_memory_percent": round(100.0 * used / total, 1) if total else None,
            "used_mb": round(used / MiB, 1),
            "total_mb": round(total / MiB, 1),
        }

    def _utilization(self) -> float | None:
        try:
            return float(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu) / 100.0
        except Exception as exc:  # NVMLError_NotSupported on MIG slices: memory still counts, utilisation cannot
            log.debug("GPU utilisation unavailable", extra={"error": str(exc)[:200]})
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.interval_s + 1.0)
        try:
            self.nvml.nvmlShutdown()
        except Exception as exc:  # shutting down a library whose device vanished: nothing more to do
            log.debug("nvmlShutdown failed", extra={"error": str(exc)[:200]})
