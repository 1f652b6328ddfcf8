"""`deepfake-processor gpu-check` on a machine without a GPU stops cleanly, and its verdicts read what was measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.gpu import _verdicts, graphs_verdict, render
from processor.cli import main


def test_on_a_cpu_host_gpu_check_fails_cleanly_naming_what_really_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gpu-check.json"
    assert main(["gpu-check", "--json", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "no GPU provider: CPUExecutionProvider" in printed and "RESULT: FAIL" in printed
    result = json.loads(out.read_text())
    assert result["passed"] is False and result["gate"]["provider"] == "CPUExecutionProvider"
    assert result["versions"]["onnxruntime"] and "model_only" not in result


# What ONNX Runtime 1.31.1's CUDA provider logged at INFO while gpu-check warmed the bucket graphs on an H200.
_REPLAY_LINE = "Replaying CUDA graph on stream 0x16550be0 with cuda_graph_annotation_id {}"


def _measured(**overrides: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "versions": {"gpus": ["GPU"], "driver": "580", "cuda_driver_api": "13.0", "onnxruntime": "1.31.1",
                     "tensorrt": None, "providers_listed": ["CUDAExecutionProvider"]},
        "checks": [],
        "providers_really_used": {"cuda": "CUDAExecutionProvider", "cuda_graphs": "CUDAExecutionProvider"},
        "graph_capture_log": [_REPLAY_LINE.format(1), _REPLAY_LINE.format(2)],
        "graph_buckets": 2,
        "memory": {"process_mb": None, "used_by_this_run_mb": 1900.0},
        "model_only": {"cuda": {"1": 300.0, "32": 2000.0}, "cuda_graphs": {"1": 500.0, "32": 2100.0}},
        "e2e": {"images_per_s": 900.0, "decode_ceiling_images_per_s": 1000.0, "instances": 1},
    }  # fmt: skip
    result.update(overrides)
    return result


def test_verdicts_pass_on_good_numbers_and_name_the_decode_ceiling_as_the_limit() -> None:
    result = _measured()
    _verdicts(result)
    assert all(c["passed"] for c in result["checks"]), result["checks"]
    assert "the limit is the CPU decode ceiling" in result["checks"][-1]["detail"]
    assert "PASS  graphs_captured" in render(result | {"passed": True})


def test_unknown_memory_and_an_unconfirmed_capture_are_failures_not_passes() -> None:
    result = _measured(graph_capture_log=[], memory={"process_mb": None, "used_by_this_run_mb": None})
    _verdicts(result)
    failed = {c["name"] for c in result["checks"] if not c["passed"]}
    assert failed == {"graphs_captured", "memory_le_2300mb_at_batch_32"}


def test_every_measuring_step_runs_through_on_the_cpu_fallback_with_a_tiny_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The steps after the gate need a GPU; here they run on the CPU fallback (require_gpu forced off), which
    # exercises the plumbing: engines per config, throughput rows, memory, the TensorRT step, the verdicts.
    import argparse
    import shutil
    from functools import partial

    from bench import gpu
    from models.loader import bundled_model_dir
    from models.variants import derive_variants
    from processor.engine import Engine

    model_dir = tmp_path / "tiny"
    shutil.copytree(bundled_model_dir(), model_dir)
    derive_variants(model_dir, ["fp16"])

    def engine(*args: Any, **kwargs: Any) -> Engine:
        return Engine(*args, **{**kwargs, "require_gpu": False})

    monkeypatch.setattr(gpu, "Engine", engine)
    monkeypatch.setattr(gpu, "default_trt_cache_dir", partial(Path, tmp_path / "trt"))
    result: dict[str, Any] = {"checks": []}
    args = argparse.Namespace(model_dir=str(model_dir), seconds=0.01, also_variants="fp32", e2e_instances="1")
    gpu._measure(result, args, (1, 2), {"e2e"})
    assert set(result["model_only"]) == {"cuda", "cuda_fp32", "cuda_graphs", "tensorrt"}
    assert set(result["model_only"]["cuda_graphs"]) == {"1", "2"}
    assert result["tensorrt"]["provider"] == "CPUExecutionProvider"
    assert result["memory"]["used_by_this_run_mb"] is None
    verdicts = {c["name"]: c["passed"] for c in result["checks"]}
    assert verdicts == {"no_cpu_fallback": False, "graphs_captured": False, "memory_le_2300mb_at_batch_32": False}


def test_graphs_count_as_captured_only_when_every_bucket_was_replayed_and_nothing_failed() -> None:
    replays = [_REPLAY_LINE.format(i) for i in range(1, 10)]
    assert graphs_verdict(replays, 9) == (True, "replayed graphs [1, 2, 3, 4, 5, 6, 7, 8, 9] of 9 buckets")
    assert graphs_verdict(replays[:8], 9)[0] is False
    failed, detail = graphs_verdict([*replays, "CUDA graph capture failed for annotation id 3"], 9)
    assert failed is False and "capture failed" in detail
    assert graphs_verdict([], 1) == (False, "ORT logged no graph replay")


def test_the_decode_ceiling_of_several_processes_adds_up_what_each_decodes(tmp_path: Path) -> None:
    import shutil

    from bench.gpu import decode_ceiling
    from models.loader import bundled_model_dir
    from models.variants import derive_variants

    shutil.copytree(bundled_model_dir(), tmp_path / "tiny")
    derive_variants(tmp_path / "tiny", ["fp16"])
    assert decode_ceiling(tmp_path / "tiny", 1, 2, seconds=0.5) > 0
