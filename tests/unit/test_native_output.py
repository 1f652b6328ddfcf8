"""What native code prints becomes log records; the TensorRT cache and the CUDA preload happen before a GPU session."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from models.loader import resolve_model
from processor import providers
from processor.engine import Engine
from processor.errors import ConfigError
from processor.logs import emit_native, native_output_captured, parse_native
from processor.providers import ensure_trt_cache_dir
from processor.settings import Providers

ORT_ERROR = (
    "\x1b[1;31m2026-11-30 13:10:09.521079241 [E:onnxruntime:Default, provider_bridge_ort.cc:2430 operator()] "
    "Failed to load library libonnxruntime_providers_cuda.so with error: libcublas.so.13: cannot open shared "
    "object file\x1b[m"
)


def test_writes_to_fds_1_and_2_and_python_prints_are_captured_not_printed(capfd: pytest.CaptureFixture[str]) -> None:
    with native_output_captured() as lines:
        os.write(1, b"*************** EP Error ***************\nEP Error: TensorRT libraries missing\n")
        os.write(2, ORT_ERROR.encode() + b"\n")
        print("Failed to load libcudart.so.13")  # onnxruntime.preload_dlls prints like this
    assert capfd.readouterr() == ("", "")
    assert [(line.stream, line.level, line.text) for line in lines if line.stream == "stdout"] == [
        ("stdout", logging.WARNING, "*************** EP Error ***************"),
        ("stdout", logging.WARNING, "EP Error: TensorRT libraries missing"),
        ("stdout", logging.WARNING, "Failed to load libcudart.so.13"),
    ]
    (ort_line,) = [line for line in lines if line.stream == "stderr"]
    assert ort_line.source == "provider_bridge_ort.cc:2430 operator()"
    assert ort_line.text.startswith("Failed to load library") and "\x1b" not in ort_line.text


def test_ort_severities_map_to_logging_levels_and_banner_rules_are_dropped() -> None:
    raw = "2026-11-30 13:10:09.5 [W:onnxruntime:Default, cuda_graph.cc:1 f] capture failed\n****\n\n"
    (line,) = parse_native("stderr", raw)
    assert (line.level, line.text) == (logging.WARNING, "capture failed")


def test_captured_lines_are_emitted_as_records_with_their_stream_and_source(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="onnxruntime"):
        emit_native(parse_native("stderr", ORT_ERROR), logging.getLogger("onnxruntime"))
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.stream == "stderr"  # type: ignore[attr-defined]
    assert record.source.startswith("provider_bridge_ort.cc")  # type: ignore[attr-defined]


def test_an_exception_inside_the_capture_restores_the_fds(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError), native_output_captured():
        raise RuntimeError("boom")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_trt_cache_dir_is_made_with_parents(tmp_path: Path) -> None:
    assert ensure_trt_cache_dir(tmp_path / "a" / "b" / "trt").is_dir()


def test_trt_cache_dir_that_cannot_be_made_is_a_config_error_naming_the_setting(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="DFP_TRT_CACHE_DIR"):
        ensure_trt_cache_dir(tmp_path / "file" / "trt")


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="CPU onnxruntime build")
def test_cuda_libraries_are_preloaded_once_and_only_when_a_gpu_provider_is_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(ort, "preload_dlls", lambda: calls.append(1), raising=False)
    providers.preload_cuda_libraries.cache_clear()
    try:
        Engine(resolve_model(None), Providers.CPU, require_gpu=False)
        assert calls == []
        first = Engine(resolve_model(None), Providers.CUDA, require_gpu=False)
        Engine(resolve_model(None), Providers.CUDA, require_gpu=False)
        assert calls == [1] and first.cuda_dlls_preloaded is True
    finally:
        providers.preload_cuda_libraries.cache_clear()


def test_without_preload_dlls_an_older_wheel_still_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(ort, "preload_dlls", raising=False)
    providers.preload_cuda_libraries.cache_clear()
    try:
        assert providers.preload_cuda_libraries() is False
    finally:
        providers.preload_cuda_libraries.cache_clear()


def test_python_stdout_is_still_usable_after_a_capture() -> None:
    with native_output_captured():
        pass
    assert sys.stdout.write("") == 0
