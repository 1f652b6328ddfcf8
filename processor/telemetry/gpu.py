"""GPU metrics through NVML (nvidia-ml-py, the optional `[gpu]` extra): a poller thread feeding gauges and /health.

Also the one NVML start-up and the memory reads the bench uses: device memory from nvmlDeviceGetMemoryInfo
always, per-process memory only where NVML sees the process (inside a container it usually does not: the
process list is empty or its PIDs are the host's), and None there, never 0.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from processor.settings import MiB
from processor.telemetry.health import Health, unknown_memory
from processor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 5.0


def load_nvml() -> ModuleType | None:
    """`pynvml`, initialised; None (with one INFO line) when the library, the driver or a device is missing.

    The one NVML start-up of the project: the poller, the bench's sampler and its machine description use it.
    """
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


def visible_devices() -> str | None:
    """CUDA_VISIBLE_DEVICES: CUDA's own variable, not a DFP setting; it decides which device a session gets."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def device_handle(nvml: ModuleType, visible: str | None) -> Any:
    """The device CUDA calls 0. NVML ignores CUDA_VISIBLE_DEVICES, so map its first entry (index or UUID)."""
    first = (visible or "").split(",")[0].strip()
    if not first:
        return nvml.nvmlDeviceGetHandleByIndex(0)
    if first.isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(first))
    return nvml.nvmlDeviceGetHandleByUUID(first)


@dataclass(frozen=True, slots=True)
class GpuMemory:
    """One memory reading of a device: what the device has in use, and what one process holds if NVML sees it."""

    device_used_mb: float
    device_total_mb: float
    process_mb: float | None  # None: NVML does not list the process (containers), or reports no figure for it


def gpu_names(nvml: Any) -> list[str]:
    """The name of every device NVML sees (e.g. "NVIDIA H100 80GB HBM3")."""
    return [str(nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i))) for i in range(nvml.nvmlDeviceGetCount())]


def process_memory_mb(nvml: Any, handle: Any, pid: int) -> float | None:
    """GPU memory held by `pid` on the device, or None when NVML does not list that process there.

    In a container NVML's process list is usually empty or carries host PIDs, so "not listed" means unknown,
    not zero.
    """
    try:
        processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except Exception as exc:  # NVMLError_NoPermission / NotSupported: the list cannot be read here
        log.debug("NVML process list unavailable", extra={"error": str(exc)[:200]})
        return None
    used = [p.usedGpuMemory for p in processes if p.pid == pid and p.usedGpuMemory is not None]
    return sum(used) / MiB if used else None


def read_memory(nvml: Any, handle: Any, pid: int | None = None) -> GpuMemory:
    """Device memory (nvmlDeviceGetMemoryInfo) and, with `pid`, that process's share where NVML sees it."""
    info = nvml.nvmlDeviceGetMemoryInfo(handle)
    process = process_memory_mb(nvml, handle, pid) if pid is not None else None
    return GpuMemory(int(info.used) / MiB, int(info.total) / MiB, process)


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
            handle = device_handle(nvml, visible_devices())
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
        """Stop the poller thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.interval_s + 1.0)
        try:
            self.nvml.nvmlShutdown()
        except Exception as exc:  # shutting down a library whose device vanished: nothing more to do
            log.debug("nvmlShutdown failed", extra={"error": str(exc)[:200]})
