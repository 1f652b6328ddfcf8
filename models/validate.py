"""Check that a model directory would serve: labels, preprocessing and every variant's graph, on onnxruntime alone.

`deepfake-processor models validate DIR` runs this before DFP_MODEL_DIR points at a new model. It needs
no `onnx` package, so it also runs in the production image. It checks what the processor relies on:
`config.json` id2label with a fake class, one float32 `pixel_values` [N,3,H,W] input whose static H/W
match `preprocessor_config.json`, a dynamic batch axis, `logits` [N,C] with C = len(id2label) (or C = 1
read as a sigmoid over two labels), and finite outputs on a synthetic batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from models.cpus import usable_cpus
from models.errors import ModelError
from models.loader import ModelFiles, fake_class_index, find_variants, resolve_model
from models.preprocess import PreprocessConfig

INPUT_NAME = "pixel_values"
INPUT_TYPE = "tensor(float)"
# Two images, so a batch axis fixed at 1 fails here rather than on the first real micro-batch.
VALIDATION_BATCH = 2
SYNTHETIC_SEED = 0


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """What a directory that passed validation offers, for the one-line OK report."""

    path: Path
    labels: tuple[str, ...]
    fake_label: str
    input_shape: tuple[int | str, ...]
    variants: tuple[str, ...]

    def line(self) -> str:
        """One printable line: the variant, its file and what is wrong (or ok)."""
        shape = ",".join(str(d) for d in self.input_shape)
        return (
            f"OK {self.path}: variants {', '.join(self.variants)}; input {INPUT_NAME} [{shape}] float32; "
            f"labels {', '.join(self.labels)} (fake: {self.fake_label})"
        )


def model_variants(path: Path, variant: str | None = None) -> tuple[ModelFiles, dict[str, Path]]:
    """The directory (or bare .onnx file) as the processor resolves it, and the variant files to check.

    `resolve_model` raises the processor's own ModelError for a missing path, no model file, an absent
    or unknown variant, and an unreadable or invalid config.json / preprocessor_config.json.
    """
    files = resolve_model(path, variant or "auto")
    if variant is not None or path.is_file():
        return files, {files.variant: files.onnx_path}
    return files, find_variants(path)


def validate_model_dir(path: Path, variant: str | None = None, fake_label: str | None = None) -> ModelSummary:
    """Return a summary when every checked variant would serve; otherwise raise ModelError listing all problems."""
    files, variants = model_variants(path, variant)
    fake_index = fake_class_index(files.id2label, fake_label)
    problems: list[str] = []
    input_shape: tuple[int | str, ...] = ()
    for name, onnx_path in variants.items():
        found, shape = check_variant(onnx_path, len(files.id2label), files.preprocess)
        problems += [f"{name} ({onnx_path.name}): {problem}" for problem in found]
        input_shape = input_shape or shape
    if problems:
        raise ModelError(f"{path} would not serve:\n  " + "\n  ".join(problems))
    labels = tuple(files.id2label[i] for i in sorted(files.id2label))
    return ModelSummary(path, labels, labels[fake_index], input_shape, tuple(variants))


def check_variant(path: Path, num_labels: int, preprocess: PreprocessConfig) -> tuple[list[str], tuple[int | str, ...]]:
    """(problems, declared input shape) for one ONNX file; no problems means the engine can serve it."""
    try:
        session = open_session(path)
    except Exception as exc:  # ORT raises its own (unexported) Fail/InvalidGraph/InvalidProtobuf types
        return [f"onnxruntime cannot load it: {str(exc)[:300]}"], ()
    inputs = session.get_inputs()
    shape = tuple(_dim(d) for d in inputs[0].shape) if inputs else ()
    output = _logits_output(session)
    problems = input_problems(inputs, preprocess) + output_problems(output, num_labels)
    if not problems and output is not None:
        problems = run_problems(session, output.name, preprocess, num_labels)
    return problems, shape


def input_problems(inputs: list[Any], preprocess: PreprocessConfig) -> list[str]:
    """What is wrong with the graph inputs for a float32 [N,3,H,W] `pixel_values` feed of preprocess's size."""
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        return [f"the model has {len(inputs)} inputs {names}; the processor feeds exactly one, {INPUT_NAME!r}"]
    name, shape, kind = inputs[0].name, [_dim(d) for d in inputs[0].shape], inputs[0].type
    problems = [] if name == INPUT_NAME else [f"input is named {name!r}; the layout requires {INPUT_NAME!r}"]
    if len(shape) != 4:
        return [*problems, f"input {name!r} has rank {len(shape)} (shape {shape}); expected 4, [N,3,H,W]"]
    if kind != INPUT_TYPE:
        problems.append(f"input {name!r} is {kind}; the processor feeds float32 ({INPUT_TYPE})")
    batch, channels, height, width = shape
    if isinstance(batch, int):
        problems.append(f"input {name!r} has a fixed batch size {batch}; the processor sends batches of 1..N")
    if isinstance(channels, int) and channels != 3:
        problems.append(f"input {name!r} has {channels} channels; expected 3 (RGB)")
    static = (height, width) if isinstance(height, int) and isinstance(width, int) else None
    if static is not None and static != (preprocess.height, preprocess.width):
        problems.append(
            f"input {name!r} is {height}×{width} but preprocessor_config.json size gives "
            f"{preprocess.height}×{preprocess.width}"
        )
    return problems


def output_problems(output: Any | None, num_labels: int) -> list[str]:
    """What is wrong with the declared scores output for `num_labels` classes."""
    if output is None:
        return ["the model has no outputs; expected logits [N,C]"]
    shape = [_dim(d) for d in output.shape]
    if len(shape) != 2:
        return [f"output {output.name!r} has shape {shape}; expected [N,C]"]
    classes = shape[1]
    if isinstance(classes, int) and not _classes_fit(classes, num_labels):
        return [_classes_message(output.name, classes, num_labels)]
    return []


def run_problems(session: Any, output: str, preprocess: PreprocessConfig, num_labels: int) -> list[str]:
    """Run a synthetic batch as the engine would; report a failure, a wrong shape or non-finite scores."""
    batch = synthetic_images(VALIDATION_BATCH, preprocess, SYNTHETIC_SEED)
    try:
        (logits,) = session.run([output], {session.get_inputs()[0].name: batch})
    except Exception as exc:  # any ORT failure at run time means the model cannot serve
        return [f"inference on a synthetic batch of {VALIDATION_BATCH} fails: {str(exc)[:300]}"]
    if logits.ndim != 2 or logits.shape[0] != VALIDATION_BATCH:
        return [f"output {output!r} is {list(logits.shape)} for a batch of {VALIDATION_BATCH}; expected [N,C]"]
    if not _classes_fit(logits.shape[1], num_labels):
        return [_classes_message(output, logits.shape[1], num_labels)]
    if not np.isfinite(logits).all():
        return [f"output {output!r} has non-finite values (NaN/Inf) on a synthetic batch of {VALIDATION_BATCH}"]
    return []


def synthetic_images(count: int, preprocess: PreprocessConfig, seed: int) -> np.ndarray:
    """`count` seeded, photo-like images as the model's float32 [N,3,H,W] input.

    Each is a random colour field at a random coarseness (bicubic from 2×2..16×16) plus pixel noise,
    rounded to uint8 values and put through the directory's own rescale/normalise, so quantised
    variants see the value range and spatial structure real photos give, unlike uniform noise.
    """
    rng = np.random.default_rng(seed)
    height, width = preprocess.height, preprocess.width
    scale, bias = preprocess.scale_and_bias()
    out = np.empty((count, 3, height, width), dtype=np.float32)
    for i in range(count):
        grid = int(rng.integers(2, 17))
        coarse = rng.integers(0, 256, (grid, grid, 3), dtype=np.uint8)
        image: np.ndarray = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        image += rng.normal(0.0, 8.0, image.shape).astype(np.float32)
        image = np.rint(np.clip(image, 0.0, 255.0))
        out[i] = (image * scale + bias).transpose(2, 0, 1)
    return out


def open_session(path: Path, threads: int = 0) -> Any:
    """A CPU session configured as the engine configures its own (full graph optimisation, no spinning)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or usable_cpus()  # as the engine: the CPUs this process may run on
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the engine: no idle spinning
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _logits_output(session: Any) -> Any | None:
    # The engine's rule: the output named `logits`, else the first one.
    outputs = session.get_outputs()
    return next((o for o in outputs if o.name == "logits"), outputs[0] if outputs else None)


def _classes_fit(classes: int, num_labels: int) -> bool:
    return classes == num_labels or (classes == 1 and num_labels == 2)


def _classes_message(name: str, classes: int, num_labels: int) -> str:
    return (
        f"output {name!r} has {classes} classes but config.json id2label has {num_labels} labels "
        "(C must equal the label count, or be 1 for a sigmoid over 2 labels)"
    )


def _dim(value: Any) -> int | str:
    """ORT reports a dimension as an int (static), a str (named) or None (unnamed dynamic)."""
    return value if isinstance(value, int) else str(value or "?")
