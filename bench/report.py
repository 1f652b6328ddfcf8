"""Bench reporting: the machine description, ratios and targets, the Markdown section and the PNG plot.

The Markdown section sits between `<!-- bench:<label>:begin -->` and `<!-- bench:<label>:end -->` markers so
re-running the bench replaces its own tables and leaves the hand-written analysis around them alone.
"""

from __future__ import annotations

import os
import platform
import shlex
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.cpus import usable_cpus

GPU_COMMAND = "`deepfake-processor bench --arch vit-b16 --variants fp16 --providers cuda --batch-sizes 1,8,16,32,64`"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    """Every GPU NVML sees; empty without nvidia-ml-py, a driver or a device."""
    from processor.telemetry.gpu import gpu_names as names
    from processor.telemetry.gpu import load_nvml

    nvml = load_nvml()
    return names(nvml) if nvml is not None else []


def library_versions() -> dict[str, str]:
    import confluent_kafka
    import cv2
    import numpy
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "confluent-kafka": str(confluent_kafka.__version__),
            "librdkafka": confluent_kafka.libversion()[0], "opencv": cv2.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}  # fmt: skip


def sgemm_gflops_per_core(seconds: float = 0.3) -> float:
    """float32 matrix-multiply GFLOP per CPU-second (numpy/BLAS): compares this CPU with others' at a glance."""
    import numpy as np

    a = np.random.default_rng(0).random((512, 512), dtype=np.float32)
    a @ a
    calls, started, cpu = 0, time.monotonic(), time.process_time()
    while calls < 3 or time.monotonic() - started < seconds:
        a @ a
        calls += 1
    return round(calls * 2 * 512**3 / max(1e-9, time.process_time() - cpu) / 1e9, 1)


def machine_info(argv: list[str]) -> dict[str, Any]:
    """CPU, cores, memory, GPU, library versions and the command line, for the JSON and the Markdown."""
    import psutil

    gpus = gpu_names()
    return {
        "cpu_model": cpu_model(),
        "cores": usable_cpus(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "gpu": ", ".join(gpus) if gpus else "none",
        "os": platform.platform(),
        # Other work on the machine skews every figure: keep the load next to them.
        "load_average_1m": round(os.getloadavg()[0], 2),
        "sgemm_gflops_per_core": sgemm_gflops_per_core(),
        "versions": library_versions(),
        "command_line": shlex.join(["deepfake-processor", *argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def _div(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def model_only_best(model_only: dict[str, dict[str, float]] | None) -> tuple[str, str, float] | None:
    """(variant, batch size, images/s) of the fastest model-only measurement."""
    if not model_only:
        return None
    return max(((v, b, r) for v, rates in model_only.items() for b, r in rates.items()), key=lambda t: t[2])


def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    e2e = result.get("e2e_images_per_s")
    best = model_only_best(result.get("model_only_images_per_s"))
    return {"e2e/pipeline_ceiling": _div(e2e, result.get("pipeline_ceiling_images_per_s")),
            "e2e/bare_ceiling": _div(e2e, result.get("bare_ceiling_images_per_s")),
            "e2e/baseline": _div(e2e, result.get("baseline_images_per_s")),
            "e2e/model_only_best": _div(e2e, best[2] if best else None)}  # fmt: skip


def cpu_view(result: dict[str, Any]) -> dict[str, float | None]:
    """Contention-proof reading: CPU-cost ratio of e2e to the in-process pipeline, and what the CPU costs
    allow on this many otherwise idle cores (cores × 1000 / CPU ms per image)."""
    cpu = result.get("extra", {}).get("cpu_ms_per_image", {})
    cores = result["machine"]["cores"]
    view: dict[str, float | None] = {"e2e/pipeline_ceiling_cpu": _div(cpu.get("pipeline_ceiling"), cpu.get("e2e"))}
    for stage in ("decode_only", "pipeline_ceiling", "e2e"):
        view[f"{stage}_idle_machine_images_per_s"] = round(cores * 1000.0 / cpu[stage], 1) if cpu.get(stage) else None
    return view


def _target_rows(full_size: bool) -> list[tuple[str, str, str, str, float]]:
    """(device, name, measure, comparison, threshold) for the performance issue's targets."""
    rows = [("cpu", "e2e_ge_0.8x_pipeline_ceiling", "e2e/pipeline_ceiling", ">=", 0.8)]
    if full_size:
        rows += [("cpu", "e2e_ge_0.9x_model_only_best", "e2e/model_only_best", ">=", 0.9),
                 ("cpu", "e2e_ge_1.1x_baseline", "e2e/baseline", ">=", 1.1),
                 ("gpu", "gpu_e2e_ge_0.8x_model_only_best", "e2e/model_only_best", ">=", 0.8),
                 ("gpu", "gpu_e2e_ge_4600_images_per_s", "e2e_images_per_s", ">=", 4600.0),
                 ("gpu", "gpu_p99_le_50ms_at_50pct_load", "latency.50.p99_ms", "<=", 50.0),
                 ("gpu", "gpu_memory_le_2300mb", "gpu_memory_mb", "<=", 2300.0)]  # fmt: skip
    else:
        rows += [("cpu", "e2e_ge_2x_baseline", "e2e/baseline", ">=", 2.0),
                 ("gpu", "gpu_e2e_ge_0.8x_pipeline_ceiling", "e2e/pipeline_ceiling", ">=", 0.8)]  # fmt: skip
    return rows


def _measure(result: dict[str, Any], measure: str) -> float | None:
    if "/" in measure:
        value: Any = result["ratios"].get(measure)
    elif measure.startswith("latency."):
        _, load, key = measure.split(".")
        value = ((result.get("latency") or {}).get(load) or {}).get(key)
    else:
        value = result.get(measure)
    return None if value is None else float(value)


def targets(result: dict[str, Any], *, full_size: bool, gpu: bool) -> list[dict[str, Any]]:
    """The issue's targets for this model and device; `met` is None when a stage was skipped or elsewhere."""
    out = _slo_targets(result, gpu)
    for device, name, measure, comparison, threshold in _target_rows(full_size):
        here = (device == "gpu") == gpu
        value = _measure(result, measure) if here else None
        met = None if value is None else (value >= threshold if comparison == ">=" else value <= threshold)
        note = ""
        if not here:
            note = f"not measured: {GPU_COMMAND}" if device == "gpu" else "not measured (this run is on a GPU)"
        elif value is None and measure == "gpu_memory_mb":
            # Per-process NVML memory is unknown inside containers; unknown is not "0 MB, target met".
            note = "unknown: NVML does not see the processor's process (container?); not called met"
        elif value is None:
            note = "not measured (a stage was skipped)"
        out.append({"name": name, "device": device, "ratio": measure, "comparison": comparison,
                    "threshold": threshold, "value": value, "met": met, "note": note})  # fmt: skip
    return out


def _slo_targets(result: dict[str, Any], gpu: bool) -> list[dict[str, Any]]:
    """SLO batching keeps p99 under its target at 50 % and 75 % load (wherever the bench runs)."""
    slo = result.get("slo")
    if not slo or "slo" not in slo["configs"]:
        return []
    target = float(slo["plan"]["latency_target_ms"])
    out = []
    for load, row in slo["configs"]["slo"]["latency"].items():
        value = row.get("p99_ms")
        out.append({"name": f"slo_p99_le_target_at_{load}pct_load", "device": "gpu" if gpu else "cpu",
                    "ratio": f"SLO p99 at {load} % load (ms)", "comparison": "<=", "threshold": target,
                    "value": value, "met": None if value is None else value <= target,
                    "note": "" if value is not None else "not measured"})  # fmt: skip
    return out


def write_section(path: Path, label: str, block: str) -> None:
    """Replace (or append) the text between this label's markers, keeping everything else in the file."""
    begin, end = f"<!-- bench:{label}:begin -->", f"<!-- bench:{label}:end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    section = f"{begin}\n{block.rstrip()}\n{end}"
    i, j = text.find(begin), text.find(end)
    found = i >= 0 and j > i
    text = text[:i] + section + text[j + len(end) :] if found else text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def fmt(value: float | None, digits: int | None = None) -> str:
    """Thousands separators; by default one decimal, two below 10 (ViT-B/16 on CPU runs at ~1 image/s)."""
    if value is None:
        return "—"
    places = digits if digits is not None else (2 if abs(value) < 10 else 1)
    return f"{value:,.{places}f}"


def markdown(result: dict[str, Any], plot: Path | None, markdown_path: Path) -> str:
    """The bench's own section: machine, command, settings, headline, model-only, latency, targets, plot."""
    m, s = result["machine"], result["settings"]
    v = m["versions"]
    lines = [
        f"#### {s['label']} — {s['served_variant']} on {s['provider']} ({m['date']})", "",
        f"- Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gb']} GB, GPU: {m['gpu']}; {m['os']}; "
        f"load average {m['load_average_1m']} at start, {m.get('load_average_1m_end', '?')} at end; "
        f"sgemm {m['sgemm_gflops_per_core']} GFLOP/s per core",
        f"- Versions: onnxruntime {v['onnxruntime']}, confluent-kafka {v['confluent-kafka']}, "
        f"librdkafka {v['librdkafka']}, opencv {v['opencv']}, numpy {v['numpy']}, python {v['python']}",
        f"- Command: `{m['command_line']}`",
        f"- Settings: DECODE_WORKERS={s['decode_workers']}, MAX_BATCH_SIZE={s['max_batch_size']}, "
        f"MAX_BATCH_WAIT_MS={s['max_batch_wait_ms']}, INFERENCE_THREADS={s['inference_threads']} (0 = cores), "
        f"MAX_IN_FLIGHT={s['max_in_flight']}, partitions={s['partitions']}, e2e events={s.get('e2e_events')}",
        f"- Images: {s['sizes']} ({s['formats']}); {s['mix']}", "",
        *_headline(result), "", *_cpu_lines(result), "", *_model_table(result), "", *_latency_table(result), "",
        *slo_table(result), "", *_targets_table(result),
    ]  # fmt: skip
    if plot is not None:
        lines += ["", f"![{s['label']} bench]({os.path.relpath(plot, markdown_path.parent)})"]
    return "\n".join(lines)


def _headline(result: dict[str, Any]) -> list[str]:
    x = result.get("extra", {})
    cpu, cores = x.get("cpu_ms_per_image", {}), x.get("cores_used", {})
    best = model_only_best(result.get("model_only_images_per_s"))
    best_cpu = x.get("model_only_cpu_ms_per_image", {}).get(best[0], {}).get(best[1]) if best else None
    rows = [
        ("decode only", "decode_only", f"{result['settings']['decode_workers']} workers"),
        ("model only (best)", "model_only", f"{best[0]} at batch {best[1]}" if best else ""),
        ("pipeline ceiling (in process)", "pipeline_ceiling",
         f"mean batch {fmt(x.get('pipeline_mean_batch_size'))}"),
        ("bare ceiling (decode + batch-32 inference)", "bare_ceiling", "no results, no batcher policy"),
        ("**end to end (Kafka)**", "e2e", _e2e_note(x)),
        ("baseline (naive, one at a time)", "baseline", ""),
    ]  # fmt: skip
    out = ["| stage | images/s | CPU ms per image | cores busy | note |", "|---|---:|---:|---:|---|"]
    for name, stage, note in rows:
        value = best[2] if stage == "model_only" and best else result.get(f"{stage}_images_per_s")
        per_image = best_cpu if stage == "model_only" else cpu.get(stage)
        out.append(f"| {name} | {fmt(value)} | {fmt(per_image)} | {fmt(cores.get(stage), 2)} | {note} |")
    gpu = result.get("gpu_memory_mb")
    gpu_text = "unknown (no GPU, or NVML cannot see the process)" if gpu is None else fmt(gpu, 0) + " MB"
    out.append(f"| peak RSS of the processor | {fmt(result.get('peak_rss_mb'), 0)} MB | | | GPU memory: {gpu_text} |")
    return out


def _cpu_lines(result: dict[str, Any]) -> list[str]:
    view = result.get("extra", {}).get("cpu_view") or {}
    cores = result["machine"]["cores"]
    if not view.get("pipeline_ceiling_idle_machine_images_per_s"):
        return []
    return [f"CPU-cost view (robust to other load on the machine): per image, e2e through Kafka is "
            f"{fmt(view.get('e2e/pipeline_ceiling_cpu'), 2)}× as CPU-efficient as the in-process pipeline; on "
            f"{cores} otherwise idle cores these costs allow "
            f"{fmt(view.get('decode_only_idle_machine_images_per_s'))} images/s decode only, "
            f"{fmt(view.get('pipeline_ceiling_idle_machine_images_per_s'))} in process and "
            f"{fmt(view.get('e2e_idle_machine_images_per_s'))} through Kafka."]  # fmt: skip


def _e2e_note(extra: dict[str, Any]) -> str:
    cpu = extra.get("e2e_cpu_cores") or {}
    stages = extra.get("processor_metrics") or {}
    parts = [f"{k} {v} cores" for k, v in cpu.items() if k != "processor"]
    if stages.get("deepfake_batch_size_mean"):
        parts.append(f"mean batch {stages['deepfake_batch_size_mean']:.1f}")
    return ", ".join(parts)


def _model_table(result: dict[str, Any]) -> list[str]:
    model = result.get("model_only_images_per_s")
    if not model:
        return ["Model only: not measured."]
    sizes = sorted({int(b) for rates in model.values() for b in rates})
    ms = result.get("extra", {}).get("model_only_ms_per_batch", {})
    out = ["Model only, images/s (ms per batch):", "", "| variant | " + " | ".join(f"b={b}" for b in sizes) + " |",
           "|---|" + "---:|" * len(sizes)]  # fmt: skip
    for variant, rates in model.items():
        cells = [f"{fmt(rates.get(str(b)))} ({fmt(ms.get(variant, {}).get(str(b)))})" for b in sizes]
        out.append(f"| {variant} | " + " | ".join(cells) + " |")
    return out


def _latency_table(result: dict[str, Any]) -> list[str]:
    latency = result.get("latency")
    if not latency:
        return ["Latency: not measured."]
    out = ["End-to-end latency (output timestamp − input timestamp, ms), paced producer:", "",
           "| load | offered events/s | sent events/s | p50 | p95 | p99 | in processor p50 | events | cores busy |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    keys = ("offered_per_s", "sent_per_s", "p50_ms", "p95_ms", "p99_ms", "processor_total_p50_ms")
    for load, row in latency.items():
        cells = [fmt(row.get(k)) for k in keys]
        out.append(f"| {load} % of e2e max | " + " | ".join(cells) + f" | {row['events']} | {_cores(row)} |")
    return out


def _cores(row: dict[str, Any]) -> str:
    """Cores each process kept busy while the paced load was sent ("—" in results from before they were kept)."""
    cores = row.get("cores") or {}
    return ", ".join(f"{name} {fmt(value, 2)}" for name, value in cores.items()) or "—"


def slo_table(result: dict[str, Any]) -> list[str]:
    slo = result.get("slo")
    if not slo:
        return ["SLO-adaptive batching: not measured."]
    plan, s = slo["plan"], result["settings"]
    target = plan["latency_target_ms"]
    loads = sorted({load for row in slo["configs"].values() for load in row["latency"]}, key=int)
    out = [f"SLO-adaptive batching (p99 target {fmt(target)} ms; loads are % of the e2e max, "
           f"{fmt(slo['reference_images_per_s'])} images/s; each latency level after {WARM_UP_NOTE}):", "",
           "| batching | max batch | max wait ms | saturated images/s | "
           + " | ".join(f"p99 at {load} % (ms)" for load in loads) + " | target met | batch limit / wait at end |",
           "|---|---:|---:|---:|" + "---:|" * len(loads) + "---|---|"]  # fmt: skip
    default = {load: ((result.get("latency") or {}).get(load) or {}).get("p99_ms") for load in loads}
    if result.get("e2e_images_per_s") is not None:
        cells = " | ".join(fmt(default[load]) for load in loads)
        out.append(f"| fixed, the bench's settings (e2e and latency above) | {s['max_batch_size']} | "
                   f"{s['max_batch_wait_ms']} | {fmt(result['e2e_images_per_s'])} | {cells} | "
                   f"{_met_text(default.values(), target)} | — |")  # fmt: skip
    names = {"fixed": "fixed, roomy bounds", "slo": f"**SLO-adaptive** (DFP_LATENCY_TARGET_MS={fmt(target)})"}
    for config, row in slo["configs"].items():
        p99 = [row["latency"].get(load, {}).get("p99_ms") for load in loads]
        end = (
            "—"
            if config != "slo"
            else f"{fmt(row.get('final_batch_limit'), 0)} / {fmt(row.get('final_batch_wait_ms'))} ms"
        )
        out.append(f"| {names.get(config, config)} | {plan['max_batch_size']} | {plan['max_batch_wait_ms']} | "
                   f"{fmt(row['images_per_s'])} | " + " | ".join(fmt(v) for v in p99)
                   + f" | {_met_text(p99, target)} | {end} |")  # fmt: skip
    return out


WARM_UP_NOTE = "a few seconds of the same paced load that are not counted"


def _met_text(p99s: Any, target: float) -> str:
    values = list(p99s)
    if any(v is None for v in values):
        return "—"
    return "yes" if all(v <= target for v in values) else "**no**"


def _targets_table(result: dict[str, Any]) -> list[str]:
    out = ["| target | measured | met |", "|---|---:|---|"]
    for t in result["targets"]:
        met = {True: "yes", False: "**no**", None: t["note"]}[t["met"]]
        sign = "≥" if t["comparison"] == ">=" else "≤"
        out.append(f"| {t['device'].upper()}: {t['ratio'].replace('/', ' / ')} {sign} {t['threshold']:g} | "
                   f"{fmt(t['value'], 2)} | {met} |")  # fmt: skip
    return out
