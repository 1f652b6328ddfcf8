"""Describe and measure every variant in a model directory: size, parameters, I/O, opset, agreement, CPU latency.

Agreement is measured against the fp32 model on a fixed, seeded set of synthetic images (see
`models.validate.synthetic_images`); latency is the median of a few timed CPU runs after one warm-up.
Needs the `[models]` extra (`onnx`) to read the graphs.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from models.postprocess import probabilities
from models.validate import model_variants, open_session, synthetic_images

DEFAULT_IMAGES = 32
DEFAULT_RUNS = 3
DEFAULT_BATCH_SIZES = (1, 32)
IMAGES_SEED = 0
CHUNK = 32
_BYTES_PER_MB = 1_000_000
_WEIGHT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT8, TensorProto.UINT8}
# 4-bit nodes store two weights per byte; their logical K×N comes from the node's attributes.
_PACKED_4BIT = {"MatMulNBits", "MatMulBnb4"}


@dataclass(frozen=True, slots=True)
class VariantReport:
    """One row of the inspect table. Agreement fields are None for fp32 itself or when fp32 is absent."""

    variant: str
    file: str
    size_mb: float
    parameters: int
    inputs: str
    outputs: str
    opset: str
    max_abs_dprob: float | None
    top1_agreement_pct: float | None
    latency_ms: dict[int, float]


def inspect_model_dir(
    path: Path,
    *,
    images: int = DEFAULT_IMAGES,
    runs: int = DEFAULT_RUNS,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    threads: int = 0,
    on_start: Callable[[str], None] | None = None,
) -> list[VariantReport]:
    """Describe and measure each variant present, fp32 first (its outputs are the agreement reference)."""
    files, variants = model_variants(path)
    agreement_set = synthetic_images(images, files.preprocess, IMAGES_SEED)
    timing_set = synthetic_images(max(batch_sizes), files.preprocess, IMAGES_SEED + 1)
    reference: np.ndarray | None = None
    reports: list[VariantReport] = []
    for variant, onnx_path in variants.items():
        if on_start is not None:
            on_start(variant)
        session = open_session(onnx_path, threads)
        probs = predict(session, agreement_set)
        if variant == "fp32":
            reference = probs
        latency = {b: median_latency_ms(session, timing_set[:b], runs) for b in batch_sizes}
        agreement = None if reference is None or variant == "fp32" else compare(reference, probs)
        reports.append(_report(variant, onnx_path, agreement, latency))
    return reports


def predict(session: Any, images: np.ndarray) -> np.ndarray:
    """Class probabilities for `images`, run in chunks of CHUNK, as the engine turns logits into scores."""
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    output = "logits" if "logits" in outputs else outputs[0]
    chunks = [session.run([output], {name: images[i : i + CHUNK]})[0] for i in range(0, len(images), CHUNK)]
    return probabilities(np.concatenate(chunks))


def compare(reference: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """(max |Δprob| over images and classes, % of images whose top-1 class matches the reference)."""
    max_delta = float(np.abs(probs - reference).max())
    agreement = float((probs.argmax(axis=1) == reference.argmax(axis=1)).mean() * 100.0)
    return max_delta, agreement


def median_latency_ms(session: Any, batch: np.ndarray, runs: int) -> float:
    """Median wall time of `runs` calls after one untimed warm-up (allocations, kernel choice)."""
    feed = {session.get_inputs()[0].name: batch}
    session.run(None, feed)
    times = []
    for _ in range(max(runs, 1)):
        started = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def count_parameters(model: onnx.ModelProto) -> int:
    """Learned values however they are stored: a packed 4-bit weight counts K×N, scales/zero points not at all."""
    skip: set[str] = set()
    total = 0
    for node in model.graph.node:
        if node.op_type in _PACKED_4BIT:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            total += int(attrs["K"]) * int(attrs["N"])
            skip.update(node.input[1:5])  # packed B, scales/absmax, zero points, g_idx; a bias (5) is counted
    for tensor in model.graph.initializer:
        aux = tensor.name in skip or tensor.name.endswith(("_scale", "_zero_point"))
        if tensor.dims and tensor.data_type in _WEIGHT_TYPES and not aux:
            total += int(np.prod(tensor.dims))
    return total


def _report(
    variant: str, path: Path, agreement: tuple[float, float] | None, latency: dict[int, float]
) -> VariantReport:  # fmt: skip
    model = onnx.load(str(path), load_external_data=False)
    initialisers = {t.name for t in model.graph.initializer}
    graph_inputs = [v for v in model.graph.input if v.name not in initialisers]
    return VariantReport(
        variant=variant,
        file=path.name,
        size_mb=round(_size_bytes(path) / _BYTES_PER_MB, 1),
        parameters=count_parameters(model),
        inputs="; ".join(_describe_value(v) for v in graph_inputs),
        outputs="; ".join(_describe_value(v) for v in model.graph.output),
        opset=", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import),
        max_abs_dprob=None if agreement is None else round(agreement[0], 6),
        top1_agreement_pct=None if agreement is None else round(agreement[1], 2),
        latency_ms={b: round(ms, 1) for b, ms in latency.items()},
    )


def _size_bytes(path: Path) -> int:
    """The model file plus its external weights file, when it has one."""
    external = path.with_name(f"{path.name}_data"), path.with_suffix(".onnx_data")
    return path.stat().st_size + sum(p.stat().st_size for p in set(external) if p.is_file())


def _describe_value(value: onnx.ValueInfoProto) -> str:
    tensor = value.type.tensor_type
    dims = ",".join(_dim_text(d) for d in tensor.shape.dim)
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    return f"{value.name} {dtype} [{dims}]"


def _dim_text(dim: onnx.TensorShapeProto.Dimension) -> str:
    if dim.HasField("dim_value"):
        return str(dim.dim_value)
    return dim.dim_param or "?"


def format_table(reports: Sequence[VariantReport]) -> str:
    """A Markdown table, one row per variant."""
    batch_sizes = sorted({b for r in reports for b in r.latency_ms})
    head = ["variant", "file", "MB", "params", "input", "output", "opset", "max abs Δprob", "top-1 agree"]
    head += [f"b={b} ms" for b in batch_sizes]
    rows = [head, ["---"] * len(head)]
    for r in reports:
        agree = "—" if r.top1_agreement_pct is None else f"{r.top1_agreement_pct:.1f} %"
        delta = "—" if r.max_abs_dprob is None else f"{r.max_abs_dprob:.4f}"
        row = [r.variant, r.file, f"{r.size_mb:.1f}", f"{r.parameters:,}", r.inputs, r.outputs, r.opset, delta, agree]
        rows.append(row + [f"{r.latency_ms[b]:.1f}" for b in batch_sizes])
    return "\n".join("| " + " | ".join(cells) + " |" for cells in rows)


def write_json(reports: Sequence[VariantReport], path: Path, *, model_dir: Path, images: int, runs: int) -> None:
    """The reports plus what they were measured on, for CI artefacts and docs."""
    data = {
        "model_dir": str(model_dir),
        "images": images,
        "images_seed": IMAGES_SEED,
        "runs": runs,
        "machine": machine_description(),
        "variants": [asdict(r) for r in reports],
    }
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def machine_description() -> dict[str, Any]:
    """CPU model and count and the onnxruntime version, so a table can be compared with another."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
    }
