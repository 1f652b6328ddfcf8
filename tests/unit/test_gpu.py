"""GPU metrics: NVML numbers flow into the gauges and /health; no NVML, no device or a CPU session → nulls."""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from processor.http.server import Health
from processor.telemetry.gpu import GpuMonitor, device_handle, load_nvml
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
