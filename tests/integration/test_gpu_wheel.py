"""The real onnxruntime-gpu wheel on a host without a GPU: what the processor reports, logs and creates.

The wheel lists TensorRT and CUDA even here; asking for them makes ORT print an `*** EP Error ***` banner on
stdout and coloured `[E:onnxruntime…]` lines on stderr before it falls back to the CPU. These tests run the
real `deepfake-processor run` (no broker needed: it is stopped by PID once the model is loaded and warmed).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import in_ci
from tests.ortgpu import PINNED, ortgpu_python

pytestmark = pytest.mark.gpu_wheel

REPO = Path(__file__).resolve().parents[2]
CPU = "CPUExecutionProvider"
INSTALL_LOG: list[str] = []
# Logged once the engine is built and warmed and the consumer is being set up: the start-up we test is over.
STARTED = '"msg": "consumer settings"'


@dataclass
class Run:
    """One finished processor run: exit code, and what it wrote on each stream."""

    code: int
    stdout: list[str]
    stderr: list[str]

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stderr if line.startswith("{")]

    def where(self, **fields: Any) -> list[dict[str, Any]]:
        return [r for r in self.records() if all(r.get(k) == v for k, v in fields.items())]


@pytest.fixture(scope="module")
def python() -> Path:
    try:
        found = ortgpu_python(INSTALL_LOG)
    except Exception as exc:  # pip or venv failed: no network, no disk, no wheel for this Python
        if in_ci():
            pytest.fail(f"CI=true and onnxruntime-gpu {PINNED} could not be installed: {exc}", pytrace=False)
        pytest.skip(f"onnxruntime-gpu {PINNED} could not be installed: {exc}")
    for line in INSTALL_LOG:
        print(line)  # shown with -s and in the CI log: the install is the slow part
    return found


def _run(python: Path, tmp: Path, **settings: str) -> Run:
    """Start `deepfake-processor run` with DFP_<settings>; stop it by PID once started (or let it exit)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFP_")}
    env.update({"PYTHONPATH": str(REPO), "DFP_BOOTSTRAP_SERVERS": "127.0.0.1:9", "DFP_HTTP_HOST": "127.0.0.1",
                "DFP_HTTP_PORT": "0", "DFP_LOG_FORMAT": "json", "DFP_DECODE_WORKERS": "1"})  # fmt: skip
    env.update({f"DFP_{k.upper()}": v for k, v in settings.items()})
    out, err = tmp / "stdout", tmp / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen([str(python), "-m", "processor", "run"], cwd=REPO, env=env, stdout=stdout,
                                stderr=stderr)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while proc.poll() is None and STARTED not in err.read_text(errors="replace"):
                assert time.monotonic() < deadline, f"processor did not start:\n{err.read_text()[-3000:]}"
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(0.1)  # polls the child for up to 0.1 s; not a sleep standing in for a condition
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    return Run(code, out.read_text().splitlines(), err.read_text().splitlines())


@pytest.fixture(scope="module")
def tensorrt_run(python: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Path]:
    """DFP_PROVIDERS=tensorrt makes ORT really try TensorRT then CUDA (and print about it) before the CPU."""
    tmp = tmp_path_factory.mktemp("trt")
    cache = tmp / "missing" / "parents" / "trt"
    return _run(python, tmp, providers="tensorrt", trt_cache_dir=str(cache)), cache


def test_the_wheel_lists_tensorrt_and_cuda_even_without_a_gpu(python: Path) -> None:
    listed = subprocess.run([str(python), "-c", "import onnxruntime as o; print(o.get_available_providers())"],
                            capture_output=True, text=True, check=True, timeout=60).stdout  # fmt: skip
    assert "TensorrtExecutionProvider" in listed and "CUDAExecutionProvider" in listed and CPU in listed


def test_json_logs_mean_every_line_on_stdout_and_stderr_is_json(tensorrt_run: tuple[Run, Path]) -> None:
    run, _ = tensorrt_run
    assert run.code == 0, run.stderr[-20:]
    assert run.stdout == []  # ORT's "*** EP Error ***" banner was captured, not printed
    for line in run.stderr:
        assert isinstance(json.loads(line), dict), line


def test_a_gpu_provider_that_fails_to_load_is_one_structured_warning_and_cpu_is_reported(
    tensorrt_run: tuple[Run, Path],
) -> None:
    run, _ = tensorrt_run
    (fallback,) = run.where(event="provider_fallback")
    assert fallback["level"] == "WARNING" and fallback["provider"] == CPU and fallback["requested"] == "tensorrt"
    assert "cannot open shared object" in fallback["reason"] and fallback["ort_output"]
    (loaded,) = run.where(msg="model loaded")
    assert loaded["provider"] == CPU


def test_the_tensorrt_cache_dir_is_created_with_its_missing_parents(tensorrt_run: tuple[Run, Path]) -> None:
    _, cache = tensorrt_run
    assert cache.is_dir()


def test_cuda_libraries_are_preloaded_before_a_gpu_session(tensorrt_run: tuple[Run, Path]) -> None:
    run, _ = tensorrt_run
    (loaded,) = run.where(msg="model loaded")
    assert loaded["cuda_dlls_preloaded"] is True


def test_auto_on_a_host_without_a_driver_runs_on_cpu_with_one_warning_saying_why(python: Path, tmp_path: Path) -> None:
    run = _run(python, tmp_path, providers="auto")
    assert run.code == 0 and run.stdout == []
    (fallback,) = run.where(event="provider_fallback")
    assert "libcuda.so.1" in fallback["reason"] and fallback["provider"] == CPU
    assert run.where(msg="model loaded")[0]["provider"] == CPU


def test_require_gpu_exits_2_naming_the_reason(python: Path, tmp_path: Path) -> None:
    run = _run(python, tmp_path, providers="tensorrt", require_gpu="true", trt_cache_dir=str(tmp_path / "trt"))
    assert run.code == 2
    (error,) = [line for line in run.stderr if "DFP_REQUIRE_GPU=true" in line]
    # The reason is in the error itself (ORT's own words), not only somewhere in what ORT printed before it.
    assert "the session runs on CPUExecutionProvider: " in error and "cannot open shared object" in error
    assert json.loads(error)["level"] == "ERROR"  # logged in the configured format, not printed as plain text
