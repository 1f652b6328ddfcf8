"""`deepfake-processor gpu-check`: the GPU acceptance run, one command, a table and a JSON file.

In order, each step recorded even when a later one fails: the versions (driver, CUDA, onnxruntime,
TensorRT) and the providers ORT lists; the gate (a session asked for CUDA must *run* on CUDA, or the run stops
with "no GPU provider: <what runs>"); ViT-B/16 fp16 model-only images/s per batch size on CUDA, on CUDA with
one captured graph per batch size, and on TensorRT (engine build timed apart; a second start must reuse the
cached engine); device memory at batch 32; end to end through the embedded broker with DECODE_WORKERS = cores,
and p50/p99 at 50 % of that rate. Verdicts: no CPU fallback, graphs captured, <= 2.3 GB at batch 32, e2e >=
0.8 x model-only (or the CPU decode ceiling named as the limit). About 5-8 minutes on one H100-class GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from models.cpus import usable_cpus
from processor.engine import Engine
from processor.providers import CUDA, TRT
from processor.settings import Providers, Settings, default_trt_cache_dir

MEMORY_TARGET_MB = 2300.0
E2E_FRACTION = 0.8
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MEMORY_BATCH = 32


def register(sub: Any) -> None:
    """Add `gpu-check` to the main parser's subcommands."""
    p = sub.add_parser("gpu-check", help="GPU acceptance: versions, providers, model-only, e2e, memory; PASS/FAIL",
                       description=__doc__)  # fmt: skip
    p.add_argument("--json", type=Path, default=Path("gpu-check.json"), help="where the result JSON goes")
    p.add_argument("--model-dir", default=None, help="ViT-B/16 directory with model_fp16.onnx (default: built once)")
    p.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="model-only batch sizes")
    p.add_argument("--seconds", type=float, default=0.5, help="timed seconds per model-only point")
    p.add_argument("--e2e-seconds", type=float, default=15.0, help="backlog sized for this long")
    p.add_argument("--skip", default="", help="comma list of: tensorrt, e2e")
    p.add_argument(
        "--e2e-instances",
        default="1",
        help="comma list of processor instance counts sharing the GPU end to end (e.g. 1,4)",
    )
    p.add_argument("--also-variants", default="",
                   help="comma list of variants (e.g. fp32) measured model-only on CUDA too")  # fmt: skip
    p.set_defaults(handler=run_gpu_check)


def run_gpu_check(args: argparse.Namespace) -> int:
    """Run every step it can, print the table, write the JSON; exit 0 only when every verdict is PASS."""
    result: dict[str, Any] = {"command": "deepfake-processor gpu-check", "versions": versions(), "checks": []}
    sizes = tuple(int(s) for s in args.batch_sizes.split(","))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    try:
        provider, reason = gate()
        result["gate"] = {"provider": provider, "reason": reason}
        if provider != CUDA:
            raise AcceptanceError(f"no GPU provider: {provider}" + (f" ({reason})" if reason else ""))
        _measure(result, args, sizes, skip)
    except AcceptanceError as exc:
        _check(result, "no_cpu_fallback", False, str(exc))
        result["error"] = str(exc)
    result["passed"] = bool(result["checks"]) and all(c["passed"] for c in result["checks"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(render(result))
    print(f"wrote {args.json}")
    return 0 if result["passed"] else 1


class AcceptanceError(Exception):
    """A step that makes the rest meaningless (no GPU session at all)."""


def _measure(result: dict[str, Any], args: argparse.Namespace, sizes: tuple[int, ...], skip: set[str]) -> None:
    from bench.workload import prepare_model_dir
    from models.loader import resolve_model

    also = [v.strip() for v in args.also_variants.split(",") if v.strip()]
    model_dir = prepare_model_dir(args.model_dir, None if args.model_dir else "vit-b16", ["fp16", *also])
    model = resolve_model(model_dir, "fp16")
    baseline = _device_memory()
    # Memory first, on an engine that never ran more than MEMORY_BATCH rows: ORT's arena keeps what the
    # largest batch needed, so after the batch-256 point it would report that batch's memory, not this one's.
    cuda = Engine(model, Providers.CUDA, require_gpu=True, max_batch_size=MEMORY_BATCH)
    result["memory"] = _memory_at(cuda, baseline)
    del cuda
    result["model_only"], result["providers_really_used"] = {}, {}
    # fp16 on CUDA (judged), then any --also-variants on the same provider (context, not judged).
    for name, served in [("cuda", model), *((f"cuda_{v}", resolve_model(model_dir, v)) for v in also)]:
        cuda = Engine(served, Providers.CUDA, require_gpu=True, max_batch_size=max(sizes))
        result["model_only"][name] = throughput(cuda, sizes, args.seconds)
        result["providers_really_used"][name] = cuda.provider
        del cuda
    graphs, captured = _graph_engine(model, sizes)
    result["providers_really_used"]["cuda_graphs"] = graphs.provider
    result["graph_capture_log"] = captured
    result["graph_buckets"] = len(sizes)
    result["model_only"]["cuda_graphs"] = throughput(graphs, sizes, args.seconds)
    del graphs
    if "tensorrt" not in skip:
        result["tensorrt"] = _tensorrt(model, sizes, args.seconds)
        result["model_only"]["tensorrt"] = result["tensorrt"].pop("images_per_s", {})
    if "e2e" not in skip:
        instances = [int(k) for k in args.e2e_instances.split(",")]
        result["e2e"] = _e2e(model_dir, args.e2e_seconds, _best(result["model_only"]), instances)
    _verdicts(result)


def versions() -> dict[str, Any]:
    """Driver, CUDA (driver API), onnxruntime, TensorRT, GPU names, and the providers the wheel lists."""
    import onnxruntime as ort

    from processor.telemetry.gpu import gpu_names, load_nvml

    out: dict[str, Any] = {"onnxruntime": ort.__version__, "providers_listed": ort.get_available_providers(),
                           "driver": None, "cuda_driver_api": None, "gpus": [],
                           "tensorrt": _tensorrt_version()}  # fmt: skip
    nvml = load_nvml()
    if nvml is not None:
        cuda = int(nvml.nvmlSystemGetCudaDriverVersion())
        out.update(driver=str(nvml.nvmlSystemGetDriverVersion()), cuda_driver_api=f"{cuda // 1000}.{cuda % 1000 // 10}",
                   gpus=gpu_names(nvml))  # fmt: skip
    return out


def _tensorrt_version() -> str | None:
    try:
        import tensorrt  # type: ignore[import-not-found,unused-ignore]  # the tensorrt pip package, where installed
    except ImportError:
        return None
    return str(tensorrt.__version__)


def gate() -> tuple[str, str]:
    """(provider a CUDA session really runs on, the fallback reason) using the small bundled model."""
    from models.loader import resolve_model

    with _records("processor.engine") as records:
        engine = Engine(resolve_model(None), Providers.CUDA, require_gpu=False)
    reasons = [str(getattr(r, "reason", "")) for r in records if getattr(r, "event", None) == "provider_fallback"]
    return engine.provider, reasons[0] if reasons else ""


class _Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord], level: int) -> None:
        super().__init__(level)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _records(name: str, level: int = logging.INFO) -> Iterator[list[logging.LogRecord]]:
    """Collect the records one logger emits during the block (ORT's captured lines arrive as records)."""
    records: list[logging.LogRecord] = []
    handler = _Collect(records, level)
    logger = logging.getLogger(name)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, old_level or level))
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def throughput(engine: Engine, sizes: Sequence[int], seconds: float) -> dict[str, float]:
    """Images/s per batch size through Engine.infer (host tensors in, probabilities out: what serving does)."""
    shape = (3, engine.model.preprocess.height, engine.model.preprocess.width)
    out = {}
    for n in sizes:
        batch = np.random.default_rng(n).uniform(-1, 1, (n, *shape)).astype(np.float32)
        engine.infer(batch)
        calls, started = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - started < seconds:
            engine.infer(batch)
            calls += 1
        out[str(n)] = round(n * calls / (time.perf_counter() - started), 1)
    return out


def _device_memory() -> float | None:
    from processor.telemetry.gpu import device_handle, load_nvml, read_memory, visible_devices

    nvml = load_nvml()
    return None if nvml is None else read_memory(nvml, device_handle(nvml, visible_devices())).device_used_mb


def _memory_at(engine: Engine, baseline_mb: float | None) -> dict[str, Any]:
    """Device memory after a batch of MEMORY_BATCH, minus the reading before the first session (an idle GPU)."""
    from processor.telemetry.gpu import device_handle, load_nvml, read_memory, visible_devices

    engine.infer(np.zeros((MEMORY_BATCH, 3, engine.model.preprocess.height, engine.model.preprocess.width), np.float32))
    nvml = load_nvml()
    if nvml is None or baseline_mb is None:
        return {"batch": MEMORY_BATCH, "device_used_mb": None, "process_mb": None, "used_by_this_run_mb": None}
    memory = read_memory(nvml, device_handle(nvml, visible_devices()), os.getpid())
    return {"batch": MEMORY_BATCH, "device_used_mb": round(memory.device_used_mb, 1),
            "device_total_mb": round(memory.device_total_mb, 1), "process_mb": memory.process_mb,
            "used_by_this_run_mb": round(memory.device_used_mb - baseline_mb, 1)}  # fmt: skip


def _graph_engine(model: Any, sizes: tuple[int, ...]) -> tuple[Engine, list[str]]:
    """A CUDA-graph engine with one bucket per batch size, warmed (= captured); ORT's INFO lines about it."""
    import onnxruntime as ort

    engine = Engine(model, Providers.CUDA, require_gpu=True, cuda_graphs=True, batch_buckets=sizes,
                    max_batch_size=max(sizes))  # fmt: skip
    ort.set_default_logger_severity(1)  # ORT says "capturing"/"captured" at INFO; only for this warm-up
    try:
        with _records("onnxruntime") as records:
            engine.warm_up((3, model.preprocess.height, model.preprocess.width), sizes)
    finally:
        ort.set_default_logger_severity(2)
    return engine, [r.getMessage() for r in records if "graph" in r.getMessage().lower()]


def _tensorrt(model: Any, sizes: tuple[int, ...], seconds: float) -> dict[str, Any]:
    """TensorRT: first start (engine build) and a second start on the same cache, then images/s per size."""
    cache = default_trt_cache_dir() / "gpu-check"
    shape = (3, model.preprocess.height, model.preprocess.width)
    starts = []
    engine = None
    for _ in range(2):
        started = time.perf_counter()
        engine = Engine(model, Providers.TENSORRT, require_gpu=True, trt_cache_dir=cache, max_batch_size=max(sizes))
        if engine.provider != TRT:
            return {"provider": engine.provider, "note": "TensorRT did not load (libraries missing?)"}
        engine.infer(np.zeros((1, *shape), np.float32))  # the engine is built (or loaded) by the first run
        starts.append(round(time.perf_counter() - started, 1))
    assert engine is not None
    return {"provider": engine.provider, "first_start_s": starts[0], "cached_start_s": starts[1],
            "cache_reused": starts[1] < 0.5 * starts[0], "cache_dir": str(cache),
            "images_per_s": throughput(engine, sizes, seconds)}  # fmt: skip


def _e2e(model_dir: Path, seconds: float, model_only_best: float, instances: Sequence[int]) -> dict[str, Any]:
    """Per layout (k processor instances sharing the GPU, cores / k decode workers each): the CPU decode
    ceiling of that layout, backlog throughput, and p50/p99 at 25/50/75 % of it, through the embedded broker.

    One Python process decodes on threads, and its per-event work (poll, envelope, hand-offs, results) holds
    the GIL: on many cores one instance stops scaling long before the GPU does, so a layout is judged against
    what its own processes can decode.
    """
    from bench.stages import Durations, progress, run_kafka

    cores = usable_cpus()  # as DECODE_WORKERS' default: the CPUs this process may run on
    events = _e2e_events()
    runs = []
    for k in instances:
        settings = _e2e_settings(model_dir, max(1, cores // k))
        decode = decode_ceiling(model_dir, settings.decode_workers, k)
        # The shape bench.stages fills in; the backlog is sized from the slower of decode and the model.
        result: dict[str, Any] = {"pipeline_ceiling_images_per_s": min(decode, model_only_best), "settings": {},
                                  "extra": {}}  # fmt: skip
        args = argparse.Namespace(partitions=max(3, cores // 2), e2e_events=0, quick=False, no_progress=True,
                                  instances=k)  # fmt: skip
        with progress(1, True) as bar:
            run_kafka(["e2e", "latency"], settings, events, Durations(e2e_s=seconds, latency_s=8.0), result, bar,
                      args)  # fmt: skip
        latency = result.get("latency") or {}
        runs.append({"instances": k, "decode_workers_each": settings.decode_workers,
                     "decode_ceiling_images_per_s": round(decode, 1), "images_per_s": result.get("e2e_images_per_s"),
                     "e2e_cpu_cores": result["extra"].get("e2e_cpu_cores"),
                     "latency_ms": {pct: {"p50": row.get("p50_ms"), "p99": row.get("p99_ms")}
                                    for pct, row in latency.items()},
                     "first_instance_gpu_mb": result.get("gpu_memory_mb")})  # fmt: skip
    best = max(runs, key=lambda r: r["images_per_s"] or 0.0)
    lat50 = best["latency_ms"].get("50") or {}
    return {"runs": runs, "instances": best["instances"], "images_per_s": best["images_per_s"],
            "decode_ceiling_images_per_s": best["decode_ceiling_images_per_s"],
            "p50_ms_at_50pct": lat50.get("p50"), "p99_ms_at_50pct": lat50.get("p99")}  # fmt: skip


def _e2e_settings(model_dir: Path, decode_workers: int) -> Settings:
    from processor.settings import load_settings

    return load_settings({"model_dir": model_dir, "model_variant": "fp16", "providers": "cuda",
                          "decode_workers": decode_workers, "max_batch_size": 64})  # fmt: skip


def _e2e_events() -> list[Any]:
    from bench.workload import iter_events
    from devtools.produce import parse_sizes

    return list(iter_events(64, parse_sizes("640x480,1280x720"), ["jpeg"]))


def decode_ceiling(model_dir: Path, workers: int, processes: int, seconds: float = 5.0) -> float:
    """Images/s that `processes` processes of `workers` decode threads each reach together (decode alone)."""
    if processes == 1:
        return _decode_one(model_dir, workers, seconds)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: this process holds CUDA sessions, which a forked child must not inherit.
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        return sum(pool.map(_decode_one, [model_dir] * processes, [workers] * processes, [seconds] * processes))


def _decode_one(model_dir: Path, workers: int, seconds: float) -> float:
    import cv2

    from bench import inproc

    cv2.setNumThreads(1)  # as processor.app.run: cv2's own threads would oversubscribe the decode pool's
    return inproc.decode_only(_e2e_settings(model_dir, workers), _e2e_events(), seconds).images_per_s


_REPLAY = re.compile(r"Replaying CUDA graph .*cuda_graph_annotation_id (\d+)")


def graphs_verdict(log: Sequence[str], buckets: int) -> tuple[bool, str]:
    """Captured when ORT replayed a graph for every bucket during warm-up and said nothing failed.

    ORT 1.31's CUDA provider logs no capture line at INFO; it logs "Replaying CUDA graph on stream … with
    cuda_graph_annotation_id N" for each replay, which can only follow a successful capture of graph N.
    """
    bad = [m for m in log if any(w in m.lower() for w in ("fail", "unable", "cannot", "not "))]
    replayed = {int(m.group(1)) for line in log if (m := _REPLAY.search(line))}
    detail = f"replayed graphs {sorted(replayed)} of {buckets} buckets" if replayed else "ORT logged no graph replay"
    if bad:
        detail += "; " + "; ".join(bad[:3])
    return len(replayed) >= buckets and not bad, detail


def _best(model_only: dict[str, dict[str, float]]) -> float:
    return max((v for rows in model_only.values() for v in rows.values()), default=0.0)


def _check(result: dict[str, Any], name: str, passed: bool, detail: str) -> None:
    result["checks"].append({"name": name, "passed": passed, "detail": detail})


def _verdicts(result: dict[str, Any]) -> None:
    used = result["providers_really_used"]
    _check(result, "no_cpu_fallback", all(p != "CPUExecutionProvider" for p in used.values()), json.dumps(used))
    _check(result, "graphs_captured", *graphs_verdict(result["graph_capture_log"], result["graph_buckets"]))
    memory = result["memory"]
    mb = memory.get("process_mb") if memory.get("process_mb") is not None else memory.get("used_by_this_run_mb")
    _check(result, "memory_le_2300mb_at_batch_32", mb is not None and mb <= MEMORY_TARGET_MB,
           f"{mb} MB" if mb is not None else "unknown (NVML unavailable)")  # fmt: skip
    e2e = result.get("e2e")
    if e2e:
        best, rate = _best(result["model_only"]), e2e.get("images_per_s") or 0.0
        decode = e2e["decode_ceiling_images_per_s"]
        limit = "CPU decode ceiling" if decode < best else "model-only"
        detail = (
            f"e2e {rate:.0f}/s ({e2e['instances']} instance(s)) vs model-only {best:.0f}/s, "
            f"decode ceiling {decode:.0f}/s: the limit is the {limit}"
        )
        _check(result, "e2e_ge_0.8x_model_only_or_decode_ceiling", rate >= E2E_FRACTION * min(best, decode), detail)


def render(result: dict[str, Any]) -> str:
    """The human table: versions, model-only rows, the other measurements, one line per verdict."""
    v = result["versions"]
    lines = [f"GPU: {', '.join(v['gpus']) or 'none seen by NVML'}; driver {v['driver']}; CUDA {v['cuda_driver_api']}; "
             f"onnxruntime {v['onnxruntime']}; TensorRT {v['tensorrt'] or 'not installed'}",
             f"providers listed: {', '.join(v['providers_listed'])}"]  # fmt: skip
    if "gate" in result:
        lines.append(f"a CUDA session really runs on: {result['gate']['provider']}")
    for config, values in (result.get("model_only") or {}).items():
        if values:
            cells = ", ".join(f"{n}: {values[n]}" for n in sorted(values, key=int))
            lines.append(f"model-only {config:<12} images/s by batch size  {cells}")
    for key in ("tensorrt", "memory", "e2e"):
        if result.get(key):
            lines.append(f"{key}: {json.dumps(result[key])}")
    lines += [f"{'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['detail']}" for c in result["checks"]]
    lines.append("RESULT: " + ("PASS" if result.get("passed") else "FAIL"))
    return "\n".join(lines)
