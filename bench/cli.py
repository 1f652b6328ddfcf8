"""`deepfake-processor bench`: one machine, one run, every stage from decode alone to Kafka end to end.

Stages (skip any with --skip): decode (DecodePool alone), model (Engine.infer per variant and batch size),
pipeline (decode + batch + score in process), baseline (the naive one-message-at-a-time loop), e2e (the real
processor subprocess draining a backlog on the embedded broker), latency (paced load at 25/50/75 % of the
e2e rate) and slo (roomy fixed batching vs the same bounds under DFP_LATENCY_TARGET_MS: saturated throughput and
p99 at 50/75 % load). Writes --json, a Markdown section between markers in --markdown, and a PNG into --plot-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from bench import inproc as inproc
from bench.goodput import TRACE_NAMES, policy_spec, run_policy_stages
from bench.goodput_report import goodput_plot, goodput_tables, partitions_lines
from bench.gpu import register as register_gpu_check
from bench.plot import plot
from bench.report import cpu_view, machine_info, markdown, ratios, targets, write_section
from bench.stages import QUICK, Durations, progress, run_inprocess, run_kafka
from bench.workload import MIX_DESCRIPTION, iter_events, prepare_model_dir
from devtools.produce import parse_sizes
from models.cli import ARCH_CHOICES
from models.loader import resolve_model
from processor.settings import Settings, load_settings

STAGES = ("decode", "model", "pipeline", "bare", "baseline", "e2e", "latency", "slo")
# Opt-in (--stages): minutes each, on Apache Kafka (bench.goodput).
POLICY_STAGES = ("partitions", "goodput")
DEFAULT_BATCH_SIZES = "1,2,4,8,16,32,64"
FULL_SIZE_BYTES = 20 * 1024 * 1024  # a model file this large is held to the full-size (ViT-B/16) targets


def register(sub: Any) -> None:
    """Add the `bench` subcommand and its flags to the CLI's subparsers."""
    p = sub.add_parser("bench", help="benchmark every stage, decode to Kafka end to end, latency and SLO batching",
                       description=__doc__)  # fmt: skip
    p.add_argument("--model-dir", default=None, help="model directory (default: the bundled vit-tiny)")
    p.add_argument("--arch", choices=ARCH_CHOICES, default=None,
                   help="build this architecture (plus int8) into ~/.cache/deepfake-processor/models")  # fmt: skip
    p.add_argument("--also-arch", type=_csv, default=[], metavar="ARCHS",
                   help="goodput: replay the same traces on these architectures too, in the same run (one "
                        "Markdown section, one plot)")  # fmt: skip
    p.add_argument("--variants", type=_csv, default=None, help="variants to bench, comma list (default: all)")
    p.add_argument("--batch-sizes", type=_ints, default=_ints(DEFAULT_BATCH_SIZES), help="model-only batch sizes")
    p.add_argument("--sizes", default="640x480,1280x720", help="image sizes WxH, cycled")
    p.add_argument("--formats", type=_csv, default=["jpeg"], help="image formats kept: jpeg,png,webp")
    p.add_argument("--decode-workers", type=int, default=None, help="DECODE_WORKERS (default: cores)")
    p.add_argument("--max-batch-size", type=int, default=None, help="MAX_BATCH_SIZE (default 32)")
    p.add_argument("--inference-threads", type=int, default=None, help="INFERENCE_THREADS (default 0 = cores)")
    p.add_argument("--providers", default=None, help="PROVIDERS: auto, tensorrt, cuda, cpu (default auto)")
    p.add_argument("--partitions", type=int, default=3, help="input topic partitions")
    p.add_argument("--processor-cpus", type=_ints, default=None, metavar="CPUS",
                   help="pin the in-process ceilings and the processor subprocesses to these CPUs (e.g. 1), and the "
                        "broker, producer and reader to the others: e2e against bare with the broker off the "
                        "processor's cores")  # fmt: skip
    p.add_argument("--e2e-seconds", type=float, default=None, help="backlog sized for this long (default 20)")
    p.add_argument("--e2e-events", type=int, default=0, help="backlog size (default: from --e2e-seconds)")
    p.add_argument("--latency-seconds", type=float, default=None, help="per load level (default 10)")
    p.add_argument("--baseline-seconds", type=float, default=None, help="baseline run time (default 10)")
    p.add_argument("--latency-target-ms", type=float, default=None,
                   help="slo stage: the p99 target (default: 2x the p99 at 25 %% load, at least 50)")  # fmt: skip
    p.add_argument("--slo-max-batch-size", type=int, default=None,
                   help="slo stage: batch bound (default 2x MAX); goodput: all policies share (MAX)")  # fmt: skip
    p.add_argument("--slo-max-wait-ms", type=float, default=None,
                   help="slo stage: wait bound (default 10x MAX); goodput: all policies share (MAX)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="seconds instead of minutes (tests, CI)")
    p.add_argument("--stages", type=_csv, default=list(STAGES),
                   help=f"stages to run (default: {','.join(STAGES)}; also {','.join(POLICY_STAGES)})")  # fmt: skip
    p.add_argument("--skip", type=_csv, default=[], help=f"stages to skip: {','.join(STAGES + POLICY_STAGES)}")
    p.add_argument("--broker", choices=("kafka", "tansu"), default="kafka",
                   help="goodput/partitions: Apache Kafka from Maven (default) or Tansu (smoke tests)")  # fmt: skip
    p.add_argument("--goodput-samples", type=int, default=0, help="goodput: events per trace (default 1000)")
    p.add_argument("--goodput-seconds", type=float, default=10.0,
                   help="goodput: each trace runs at least this long, with more events than --goodput-samples "
                        "where needed (default 10; --quick: 0)")  # fmt: skip
    p.add_argument("--policies", type=_policies, default=None,
                   help="goodput: batching policies, comma list; POLICY:ROWS/MS runs one at bounds of its own, "
                        "e.g. fixed:64/50, and +fifo keeps decode in consume order (default: all five at the shared "
                        "bounds, plus fixed at 2x MAX_BATCH_SIZE / 10x MAX_BATCH_WAIT_MS)")  # fmt: skip
    p.add_argument("--goodput-traces", type=_traces, default=None, metavar="TRACES",
                   help=f"goodput: replay only these traces, comma list of {','.join(TRACE_NAMES)} (the same "
                        "arrivals a full run gives them; default: all)")  # fmt: skip
    p.add_argument("--goodput-slices", type=_positive, default=4,
                   help="goodput: each trace is replayed in this many slices, the policies taking turns slice by "
                        "slice (default 4; each cell's JSON row gives the share within the SLO per slice)")  # fmt: skip
    p.add_argument("--burst-mean-pct", type=float, default=40.0,
                   help="goodput: the bursty trace's mean, %% of the saturated rate (peaks 3x)")  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="write the result JSON here")
    p.add_argument("--markdown", default="docs/BENCHMARKS.md", help="Markdown file to update ('' = none)")
    p.add_argument("--plot-dir", default="docs/img", help="where the PNG goes ('' = no plot)")
    p.add_argument("--label", default=None, help="section/plot name (default: the model directory's name)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="measure nothing: redo ratios, targets, Markdown, plot from a saved --json result")  # fmt: skip
    p.set_defaults(handler=run_bench)
    register_gpu_check(sub)  # `deepfake-processor gpu-check`: the GPU acceptance run (bench/gpu.py)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _policies(text: str) -> list[str]:
    policies = _csv(text)
    for policy in policies:
        try:
            policy_spec(policy)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return policies


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1; got {text!r}")
    return int(text)


def _traces(text: str) -> list[str]:
    names = _csv(text)
    unknown = sorted(set(names) - set(TRACE_NAMES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"traces are {', '.join(TRACE_NAMES)}; got {text!r}")
    return names


def _ints(text: str) -> list[int]:
    return [int(part) for part in _csv(text)]


def run_bench(args: argparse.Namespace) -> int:
    """Run the chosen stages (or, with --render, only the report of a saved result); the exit code."""
    if args.render:
        saved = json.loads(args.render.read_text(encoding="utf-8"))
        only_policies = set(saved["settings"].get("stages", [])) <= set(POLICY_STAGES)
        (_report_policies if only_policies and saved.get("goodput") else _report)(saved, args)
        return 0
    import cv2

    cv2.setNumThreads(1)  # as processor.app.run: parallelism comes from the decode pool
    _unwind_on_sigterm()
    known = STAGES + POLICY_STAGES
    unknown = sorted((set(args.skip) | set(args.stages)) - set(known))
    if unknown:
        print(f"bench: unknown stage(s): {', '.join(unknown)} (stages: {', '.join(known)})")
        return 2
    todo = [s for s in known if s in args.stages and s not in args.skip]
    unknown_archs = sorted(set(args.also_arch) - set(ARCH_CHOICES))
    if unknown_archs or (args.also_arch and "goodput" not in todo):
        print(f"bench: --also-arch takes {', '.join(ARCH_CHOICES)} and goes with the goodput stage")
        return 2
    model_dir = prepare_model_dir(args.model_dir, args.arch, args.variants)
    variants = inproc.model_variants(model_dir, args.variants)
    settings = _settings(args, model_dir, variants[0] if args.variants else "auto")
    result = _new_result(args, settings, model_dir, variants)
    result["settings"]["stages"] = todo
    events = list(iter_events(64, parse_sizes(args.sizes), args.formats))
    pinned = _split_cpus(args.processor_cpus)
    if pinned is False:
        return 2
    result["settings"]["processor_cpus"] = sorted(pinned[0]) if pinned else None
    usable = os.sched_getaffinity(0)
    try:
        with progress(len(todo) + len(args.also_arch), args.no_progress) as bar:
            if pinned:
                os.sched_setaffinity(0, pinned[0])  # threads the in-process stages start inherit it
            settings = run_inprocess(todo, settings, variants, events, _durations(args), result, bar, args)
            if pinned:
                os.sched_setaffinity(0, pinned[1])  # the broker, producer and reader: the other CPUs
            if {"baseline", "e2e", "latency", "slo"} & set(todo):
                run_kafka(todo, settings, events, _durations(args), result, bar, args)
            if set(POLICY_STAGES) & set(todo):
                run_policy_stages(todo, settings, events, result, bar, args)
                result["also"] = [_goodput_on(arch, args, events, bar) for arch in args.also_arch]
    finally:
        os.sched_setaffinity(0, usable)  # a caller in the same process (tests) gets its CPUs back
    _finish(result, model_dir, settings)
    if set(todo) <= set(POLICY_STAGES):
        _report_policies(result, args)  # the main section and plot stay as the last full run left them
    else:
        _report(result, args)
    return 0


def _goodput_on(arch: str, args: argparse.Namespace, events: list[Any], bar: Any) -> dict[str, Any]:
    """The goodput stage once more, on another architecture: the same traces (as shares of its own saturated
    rate), the same policies and bounds, on a broker of its own. Its settings and goodput rows."""
    model_dir = prepare_model_dir(None, arch, args.variants)
    variants = inproc.model_variants(model_dir, args.variants)
    settings = _settings(args, model_dir, variants[0] if args.variants else "auto")
    result = _new_result(args, settings, model_dir, variants)
    result["settings"]["label"] = model_dir.resolve().name
    result["settings"]["served_variant"] = resolve_model(model_dir, settings.model_variant.value).variant
    run_policy_stages(["goodput"], settings, events, result, bar, args)
    _finish(result, model_dir, settings)
    return {"settings": result["settings"], "goodput": result["goodput"]}


def _durations(args: argparse.Namespace) -> Durations:
    base = QUICK if args.quick else Durations()
    return replace(base, e2e_s=args.e2e_seconds or base.e2e_s, latency_s=args.latency_seconds or base.latency_s,
                   baseline_s=args.baseline_seconds or base.baseline_s)  # fmt: skip


def _settings(args: argparse.Namespace, model_dir: Path, variant: str) -> Settings:
    overrides: dict[str, Any] = {"model_dir": model_dir, "model_variant": variant}
    for name in ("decode_workers", "max_batch_size", "inference_threads", "providers"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    return load_settings(overrides)


def _new_result(args: argparse.Namespace, settings: Settings, model_dir: Path, variants: list[str]) -> dict[str, Any]:
    label = args.label or (model_dir.resolve().name if model_dir.is_dir() else model_dir.stem)
    keys = ("decode_only_images_per_s", "model_only_images_per_s", "pipeline_ceiling_images_per_s",
            "bare_ceiling_images_per_s", "e2e_images_per_s", "baseline_images_per_s", "latency", "peak_rss_mb",
            "gpu_memory_mb")  # fmt: skip
    result: dict[str, Any] = dict.fromkeys(keys)
    result["machine"] = machine_info(sys.argv[1:] if sys.argv[1:2] == ["bench"] else ["bench"])
    result["settings"] = {
        "label": label, "model_dir": str(model_dir), "variants": variants, "served_variant": "auto",
        "provider": "not loaded", "decode_workers": settings.decode_workers, "max_batch_size": settings.max_batch_size,
        "max_batch_wait_ms": settings.max_batch_wait_ms, "inference_threads": settings.inference_threads,
        "max_in_flight": settings.max_in_flight, "batch_sizes": args.batch_sizes, "sizes": args.sizes,
        "formats": ",".join(args.formats), "mix": MIX_DESCRIPTION, "partitions": args.partitions,
        "quick": args.quick, "skip": list(args.skip), "e2e_events": None,
    }  # fmt: skip
    result["extra"] = {}
    return result


def _finish(result: dict[str, Any], model_dir: Path, settings: Settings) -> None:
    """Facts known only at the end of a run: the served model's size, the load average."""
    model = resolve_model(model_dir, settings.model_variant.value)
    result["settings"]["model_bytes"] = sum(
        p.stat().st_size for p in model.onnx_path.parent.glob(model.onnx_path.name + "*")
    )
    result["machine"]["load_average_1m_end"] = round(os.getloadavg()[0], 2)


def _report(result: dict[str, Any], args: argparse.Namespace) -> None:
    """Ratios, targets and the CPU view from the measurements; then JSON, Markdown, plot and a summary."""
    gpu = result["settings"]["provider"] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    full_size = result["settings"].get("model_bytes", 0) >= FULL_SIZE_BYTES
    result["ratios"] = ratios(result)
    result["extra"]["cpu_view"] = cpu_view(result)
    result["targets"] = targets(result, full_size=full_size, gpu=gpu)
    result["targets_met"] = {t["name"]: t["met"] for t in result["targets"]}
    png = plot(result, Path(args.plot_dir) / f"bench-{result['settings']['label']}.png") if args.plot_dir else None
    if args.markdown:
        path = Path(args.markdown)
        write_section(path, result["settings"]["label"], markdown(result, png, path))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    _print_summary(result, args, png)


def _report_policies(result: dict[str, Any], args: argparse.Namespace) -> None:
    """goodput/partitions only: their JSON, their own Markdown section and plot (one per run, every model)."""
    models = [result, *result.get("also", [])]
    label = "goodput-" + "+".join(r["settings"]["label"] for r in models)
    png = goodput_plot(result, Path(args.plot_dir) / f"{label}.png") if args.plot_dir else None
    json_name = str(args.json) if args.json else None
    if args.markdown:
        path = Path(args.markdown)
        m = result["machine"]
        lines = [f"#### {label} ({m['date']}; {m['cpu_model']}, {m['cores']} cores, load average "
                 f"{m['load_average_1m']} at start, {m.get('load_average_1m_end', '?')} at end)", "",
                 f"- Command: `{m['command_line']}`", "", *partitions_lines(result, json_name)]  # fmt: skip
        for r in models:
            lines += ["", f"**{r['settings']['label']}** ({r['settings']['served_variant']}):", "",
                      *goodput_tables(r, json_name)]  # fmt: skip
        if png is not None:
            lines += ["", f"![{label}]({os.path.relpath(png, path.parent)})"]
        write_section(path, label, "\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("\n".join([*partitions_lines(result), *(line for r in models for line in goodput_tables(r))]))


def _print_summary(result: dict[str, Any], args: argparse.Namespace, png: Path | None) -> None:
    keys = ("decode_only_images_per_s", "pipeline_ceiling_images_per_s", "bare_ceiling_images_per_s",
            "e2e_images_per_s", "baseline_images_per_s", "peak_rss_mb")  # fmt: skip
    for key in keys:
        print(f"{key:32} {result[key]}")
    for name, value in result["ratios"].items():
        print(f"{name:32} {value}")
    for t in result["targets"]:
        print(f"target {t['name']:40} {t['met'] if t['met'] is not None else t['note']}")
    written = [str(p) for p in (args.json, args.markdown or None, png) if p]
    print("wrote " + ", ".join(written) if written else "wrote nothing (no --json, --markdown '', --plot-dir '')")


def _split_cpus(cpus: list[int] | None) -> tuple[frozenset[int], frozenset[int]] | Literal[False] | None:
    """--processor-cpus → (the processor's CPUs, the rest); None without it; False (after saying why) if unusable."""
    if not cpus:
        return None
    usable = os.sched_getaffinity(0)
    chosen = frozenset(cpus)
    if not chosen <= usable or not usable - chosen:
        print(f"bench: --processor-cpus takes some, not all, of the CPUs this process may use: {sorted(usable)}")
        return False
    return chosen, frozenset(usable - chosen)


def _unwind_on_sigterm() -> None:
    """SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C.

    Each broker and processor a stage started is then stopped by its PID on the way out, not left running.
    """

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.cli …` (same as `deepfake-processor bench …`)."""
    parser = argparse.ArgumentParser(prog="deepfake-processor")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(argv if argv is not None else sys.argv[1:])])
    return int(args.handler(args))
