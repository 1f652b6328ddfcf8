"""Resolve a model directory (docs/MODELS.md) or a bare .onnx file into the file, labels and preprocessing to load.

Nothing here imports `onnx`: the production image ships only onnxruntime.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from models.errors import ModelError
from models.preprocess import PreprocessConfig, default_preprocess_config, load_preprocess_config, read_json

# File names per variant, in the order they are looked for (transformers.js names int8 either way).
VARIANT_FILES: dict[str, list[str]] = {
    "fp32": ["model.onnx"],
    "fp16": ["model_fp16.onnx"],
    "int8": ["model_int8.onnx", "model_quantized.onnx"],
    "q4": ["model_q4.onnx"],
    "bnb4": ["model_bnb4.onnx"],
}
# `auto` preference, fastest first. CPU (ViT-B/16, 2 threads, an x86 dev host): int8 36 ms, fp32 88, fp16 93,
# q4 95, bnb4 108 — only int8 beats fp32. GPU: fp16 halves memory traffic; the 4-bit MatMulNBits /
# MatMulBnb4 ops have CUDA kernels, while dynamic int8 (MatMulInteger) mostly falls back to the CPU.
AUTO_ORDER_CPU = ("int8", "fp32", "fp16", "q4", "bnb4")
AUTO_ORDER_GPU = ("fp16", "fp32", "q4", "bnb4", "int8")
FAKE_LABEL_WORDS = ("fake", "deepfake", "spoof")
_VARIANT_SUFFIX = re.compile(r"_(fp16|int8|quantized|q4|bnb4)$")
_HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """Everything the engine and decode stage need to know about the chosen model file."""

    name: str
    variant: str
    onnx_path: Path
    sha256: str
    id2label: dict[int, str]
    preprocess: PreprocessConfig


def bundled_model_dir() -> Path:
    """The tiny random-weight ViT shipped inside the package (demo and tests; not a real detector)."""
    return Path(__file__).resolve().parent / "bundled" / "vit-tiny"


def resolve_model(model_dir: str | Path | None, variant: str = "auto", *, gpu: bool = False) -> ModelFiles:
    """Pick the ONNX file to load and read its labels and preprocessing.

    `model_dir` is a model directory (docs/MODELS.md) (variants under `onnx/`, or at its top level), a single
    `.onnx` file, or None for the bundled model. `variant="auto"` picks, among the files present,
    fp16 on a GPU and int8 on a CPU, falling back to fp32 (then the rest, see AUTO_ORDER_*): on a
    CPU only int8 runs faster than fp32, while on a GPU fp16 is the fast path. An explicitly named
    variant that is absent is a ModelError listing the variants present. External weights
    (`*.onnx_data`) stay next to the model file, where onnxruntime looks for them.
    """
    if variant != "auto" and variant not in VARIANT_FILES:
        raise ModelError(f"unknown model variant {variant!r}; use auto or one of {', '.join(VARIANT_FILES)}")
    path = bundled_model_dir() if model_dir is None else Path(model_dir)
    if path.is_file():
        return _resolve_single_file(path, variant)
    if not path.is_dir():
        raise ModelError(f"model path {path} does not exist")
    present = find_variants(path)
    if not present:
        names = sorted({n for files in VARIANT_FILES.values() for n in files})
        raise ModelError(f"no ONNX model in {path} or {path / 'onnx'} (looked for {', '.join(names)})")
    chosen = _choose_variant(present, variant, gpu, path)
    onnx_path = present[chosen]
    return ModelFiles(
        name=path.resolve().name,
        variant=chosen,
        onnx_path=onnx_path,
        sha256=file_sha256(onnx_path),
        id2label=load_id2label(path / "config.json"),
        preprocess=load_preprocess_config(path / "preprocessor_config.json"),
    )


def find_variants(model_dir: Path) -> dict[str, Path]:
    """Variant -> file for every variant present; `onnx/` wins over the top level."""
    present: dict[str, Path] = {}
    for variant, names in VARIANT_FILES.items():
        for folder in (model_dir / "onnx", model_dir):
            found = next((folder / n for n in names if (folder / n).is_file()), None)
            if found is not None:
                present[variant] = found
                break
    return present


def _choose_variant(present: dict[str, Path], variant: str, gpu: bool, model_dir: Path) -> str:
    if variant == "auto":
        order = AUTO_ORDER_GPU if gpu else AUTO_ORDER_CPU
        return next(v for v in order if v in present)
    if variant not in present:
        raise ModelError(
            f"model variant {variant!r} ({' or '.join(VARIANT_FILES[variant])}) is not in {model_dir}; "
            f"present: {', '.join(present)}"
        )
    return variant


def _resolve_single_file(path: Path, variant: str) -> ModelFiles:
    """A bare .onnx file: labels from the output width, ViT defaults for preprocessing."""
    if path.suffix != ".onnx":
        raise ModelError(f"model file {path} is not an .onnx file")
    match = _VARIANT_SUFFIX.search(path.stem)
    inferred = {"quantized": "int8"}.get(match.group(1), match.group(1)) if match else "fp32"
    if variant not in ("auto", inferred):
        raise ModelError(
            f"model file {path} looks like variant {inferred!r}, not {variant!r}; "
            "to choose among variants pass the model directory"
        )
    num_classes, height, width = _probe_shapes(path)
    # No config to say what the classes are: two outputs are taken as the usual Real/Fake pair.
    id2label = {0: "Real", 1: "Fake"} if num_classes == 2 else {i: f"LABEL_{i}" for i in range(num_classes)}
    preprocess = default_preprocess_config()
    if (height, width) != (preprocess.height, preprocess.width):
        preprocess = _with_size(preprocess, height, width)
    return ModelFiles(path.stem, inferred, path, file_sha256(path), id2label, preprocess)


def _probe_shapes(path: Path) -> tuple[int, int, int]:
    """(classes, input height, input width) from the graph's declared shapes, via onnxruntime."""
    import onnxruntime as ort  # deferred: only bare-file models need a session here

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own (unexported) exception types for bad files
        raise ModelError(f"model file {path} cannot be loaded by onnxruntime: {exc}") from exc
    out_shape = session.get_outputs()[0].shape
    in_shape = session.get_inputs()[0].shape
    num_classes = out_shape[-1] if out_shape else None
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(
            f"model file {path}: output {session.get_outputs()[0].name!r} has no fixed class count "
            f"(shape {out_shape}); use a model directory with config.json"
        )
    height, width = (in_shape[2], in_shape[3]) if len(in_shape) == 4 else (None, None)
    if not (isinstance(height, int) and isinstance(width, int)):
        return num_classes, default_preprocess_config().height, default_preprocess_config().width
    return num_classes, height, width


def _with_size(config: PreprocessConfig, height: int, width: int) -> PreprocessConfig:
    return PreprocessConfig(
        height=height,
        width=width,
        resize_shortest_edge=None,
        do_resize=config.do_resize,
        resample=config.resample,
        do_rescale=config.do_rescale,
        rescale_factor=config.rescale_factor,
        do_normalize=config.do_normalize,
        image_mean=config.image_mean,
        image_std=config.image_std,
    )


def load_id2label(path: Path) -> dict[int, str]:
    """`id2label` from config.json as {index: label}, indices exactly 0..C-1."""
    data = read_json(path, "model config")
    raw = data.get("id2label") if isinstance(data, dict) else None
    if not isinstance(raw, dict) or not raw:
        raise ModelError(f"{path}: key 'id2label' is missing or not a non-empty object")
    id2label: dict[int, str] = {}
    for key, label in raw.items():
        if not (isinstance(key, str) and key.isdigit() and isinstance(label, str) and label):
            raise ModelError(f"{path}: key 'id2label' entry {key!r}: {label!r} is not an index and a label")
        id2label[int(key)] = label
    if sorted(id2label) != list(range(len(id2label))):
        raise ModelError(f"{path}: key 'id2label' indices must be 0..{len(id2label) - 1}, got {sorted(id2label)}")
    return dict(sorted(id2label.items()))


def fake_class_index(id2label: dict[int, str], fake_label: str | None) -> int:
    """Index of the class whose probability is the fake score.

    An explicit `fake_label` is matched case-insensitively; otherwise the first label that is
    fake/deepfake/spoof, then the first that contains one of them (e.g. "FAKE_FACE").
    """
    by_lower = [(i, label.lower()) for i, label in sorted(id2label.items())]
    if fake_label is not None:
        wanted = fake_label.lower()
        found = next((i for i, label in by_lower if label == wanted), None)
        if found is None:
            raise ModelError(f"fake label {fake_label!r} is not a model label; labels: {list(id2label.values())}")
        return found
    for matches in (lambda s: s in FAKE_LABEL_WORDS, lambda s: any(w in s for w in FAKE_LABEL_WORDS)):
        found = next((i for i, label in by_lower if matches(label)), None)
        if found is not None:
            return found
    raise ModelError(
        f"no label looks like the fake class (fake/deepfake/spoof) in {list(id2label.values())}; set FAKE_LABEL"
    )


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks so a 343 MB model does not sit in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
