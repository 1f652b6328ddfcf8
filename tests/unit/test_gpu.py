"""GPU metrics: NVML numbers flow into the gauges and /health; no NVML, no device or a CPU session → nulls."""

from __future__ import annotations

import logging
import os
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from processor.http.server import Health
from processor.telemetry.gpu import GpuMonitor, device_handle, load_nvml, process_memory_mb, read_memory
from processor.telemetry.metrics import Metrics

GiB = 1024**3


class NVMLError(Exception):
    pass


class FakeNvml:
    """Just the pynvml calls the poller makes, with numbers a test sets."""

    def __init__(self, devices: int = 1, used: int = 3 * GiB, total: int = 12 * GiB, util: int = 37) -> None:
        self.devices, self.used, self.total, self.util = devices, used, total, util
        self.init_error: Exception | None = None
        self.read_error: Exception | None = None
        self.util_error: Exception | None = None
        self.processes_error: Exception | None = None
        self.processes: list[tuple[int, int | None]] = []  # (pid, bytes); empty as NVML shows it in a container
        self.shutdowns = 0
        self.handles: list[Any] = []

    def nvmlInit(self) -> None:
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.devices

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self.handles.append(("index", index))
        return f"dev{index}"

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> Any:
        self.handles.append(("uuid", uuid))
        return uuid

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        if self.read_error:
            raise self.read_error
        return SimpleNamespace(used=self.used, total=self.total, free=self.total - self.used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        if self.processes_error:
            raise self.processes_error
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self.processes]

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return f"Fake GPU {handle}"

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        if self.util_error:
            raise self.util_error
        return SimpleNamespace(gpu=self.util, memory=10)


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


def gauge(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def test_gpu_numbers_flow_into_metrics_and_health(nvml: FakeNvml) -> None:
    metrics, health = Metrics(), Health(gpu_available=True)
    monitor = GpuMonitor.start_for(True, metrics, health)
    assert monitor is not None
    try:
        assert gauge(metrics, "deepfake_gpu_memory_used_bytes") == 3 * GiB
        assert gauge(metrics, "deepfake_gpu_memory_total_bytes") == 12 * GiB
        assert gauge(metrics, "deepfake_gpu_utilization_ratio") == pytest.approx(0.37)
        assert health.memory == {"gpu_memory_percent": 25.0, "used_mb": 3072.0, "total_mb": 12288.0}
        assert health.document()["memory_usage"]["gpu_memory_percent"] == 25.0
        nvml.used, nvml.util = 6 * GiB, 90
        monitor.poll_once()
        assert health.memory["gpu_memory_percent"] == 50.0
        assert gauge(metrics, "deepfake_gpu_utilization_ratio") == pytest.approx(0.9)
    finally:
        monitor.stop()
    assert nvml.shutdowns == 1


def test_cpu_session_starts_no_poller_and_health_keeps_nulls(nvml: FakeNvml) -> None:
    health = Health()
    assert GpuMonitor.start_for(False, Metrics(), health) is None
    assert health.document()["gpu_available"] is False
    assert health.document()["memory_usage"] == {"gpu_memory_percent": None, "used_mb": None, "total_mb": None}


def test_gpu_metrics_follow_a_hot_swap_between_cpu_and_gpu(nvml: FakeNvml) -> None:
    metrics, health = Metrics(), Health()
    assert GpuMonitor.follow(None, False, metrics, health) is None  # CPU model: no poller
    monitor = GpuMonitor.follow(None, True, metrics, health)  # swapped to a GPU model: polling starts
    assert monitor is not None and health.memory["used_mb"] == 3072.0
    assert GpuMonitor.follow(monitor, True, metrics, health) is monitor  # GPU to GPU: the same poller
    assert GpuMonitor.follow(monitor, False, metrics, health) is None  # back to CPU: stopped, nulls again
    assert nvml.shutdowns == 1
    assert health.document()["memory_usage"] == {"gpu_memory_percent": None, "used_mb": None, "total_mb": None}


def test_absent_nvml_library_disables_gpu_metrics_with_one_info_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    metrics, health = Metrics(), Health(gpu_available=True)
    with caplog.at_level(logging.INFO, logger="processor.telemetry.gpu"):
        assert GpuMonitor.start_for(True, metrics, health) is None
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "nvidia-ml-py" in caplog.records[0].getMessage()
    assert health.memory["used_mb"] is None and gauge(metrics, "deepfake_gpu_memory_used_bytes") == 0.0


def test_nvml_without_driver_or_device_disables_gpu_metrics(nvml: FakeNvml, caplog: pytest.LogCaptureFixture) -> None:
    nvml.init_error = NVMLError("Driver Not Loaded")
    with caplog.at_level(logging.INFO, logger="processor.telemetry.gpu"):
        assert load_nvml() is None
        nvml.init_error, nvml.devices = None, 0
        assert load_nvml() is None
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.INFO]


def test_cuda_visible_devices_picks_the_nvml_device(nvml: FakeNvml) -> None:
    assert device_handle(nvml, None) == "dev0"  # type: ignore[arg-type]
    assert device_handle(nvml, "2,3") == "dev2"  # type: ignore[arg-type]
    assert device_handle(nvml, "GPU-8a1b, GPU-ffff") == "GPU-8a1b"  # type: ignore[arg-type]


def test_a_failing_read_keeps_the_last_values_and_warns_once(nvml: FakeNvml, caplog: pytest.LogCaptureFixture) -> None:
    metrics, health = Metrics(), Health(gpu_available=True)
    monitor = GpuMonitor(nvml, "dev0", metrics, health)  # type: ignore[arg-type]
    monitor.poll_once()
    nvml.read_error = NVMLError("GPU is lost")
    with caplog.at_level(logging.WARNING, logger="processor.telemetry.gpu"):
        monitor.poll_once()
        monitor.poll_once()
    assert len(caplog.records) == 1
    assert health.memory["gpu_memory_percent"] == 25.0
    assert gauge(metrics, "deepfake_gpu_memory_used_bytes") == 3 * GiB


def test_a_mig_slice_without_utilisation_still_reports_memory(nvml: FakeNvml) -> None:
    nvml.util_error = NVMLError("Not Supported")
    metrics, health = Metrics(), Health(gpu_available=True)
    GpuMonitor(nvml, "MIG-1", metrics, health).poll_once()  # type: ignore[arg-type]
    assert health.memory["total_mb"] == 12288.0
    assert gauge(metrics, "deepfake_gpu_memory_used_bytes") == 3 * GiB
    assert gauge(metrics, "deepfake_gpu_utilization_ratio") == 0.0


# ---- memory reads shared with the bench ------------------------------------------------------------------------


def test_process_memory_is_unknown_not_zero_when_nvml_does_not_list_the_process(nvml: FakeNvml) -> None:
    # Inside a container NVML lists no processes (or host PIDs): the per-process figure is unknown.
    memory = read_memory(nvml, "dev0", pid=4242)
    assert memory.process_mb is None
    assert (memory.device_used_mb, memory.device_total_mb) == (3072.0, 12288.0)


def test_process_memory_is_read_where_nvml_lists_the_process(nvml: FakeNvml) -> None:
    nvml.processes = [(7, 100 * 1024 * 1024), (4242, 512 * 1024 * 1024), (4242, None)]
    assert process_memory_mb(nvml, "dev0", 4242) == 512.0
    nvml.processes_error = NVMLError("NoPermission")
    assert process_memory_mb(nvml, "dev0", 4242) is None


def test_bench_sampler_reports_device_memory_and_null_process_memory_in_a_container(nvml: FakeNvml) -> None:
    from bench.e2e import ResourceSampler

    sampler = ResourceSampler(os.getpid())
    sampler._sample_gpu()
    assert sampler.peak_gpu_mb is None  # was 0.0: "0 MB" passed the 2.3 GB target with nothing measured
    assert sampler.peak_device_gpu_mb == 3072.0
    nvml.processes = [(os.getpid(), 1024 * 1024 * 1024)]
    sampler._sample_gpu()
    assert sampler.peak_gpu_mb == 1024.0


def test_bench_report_does_not_call_the_memory_target_met_when_memory_is_unknown() -> None:
    from bench.report import targets

    result: dict[str, Any] = {"ratios": {}, "gpu_memory_mb": None}
    (row,) = [t for t in targets(result, full_size=True, gpu=True) if t["name"] == "gpu_memory_le_2300mb"]
    assert row["met"] is None and "unknown" in row["note"]
    result["gpu_memory_mb"] = 1800.0
    (row,) = [t for t in targets(result, full_size=True, gpu=True) if t["name"] == "gpu_memory_le_2300mb"]
    assert row["met"] is True


def test_gpu_names_come_from_the_one_nvml_start_up(nvml: FakeNvml) -> None:
    from bench.report import gpu_names

    nvml.devices = 2
    assert gpu_names() == ["Fake GPU dev0", "Fake GPU dev1"]
