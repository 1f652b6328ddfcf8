"""Derive the fp16 / int8 / q4 / bnb4 variants of a model directory's fp32 `model.onnx` into its `onnx/` folder.

Each variant comes from the converter or quantizer that onnx / onnxruntime ship for it, with the
settings transformers.js exports use, so a directory built here has the same files as FaceSocial's.
Needs the `[models]` extra (onnx, onnxconverter-common, onnx-ir); onnxruntime provides the quantizers.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx

from models.builder import EXTERNAL_DATA_THRESHOLD_BYTES
from models.errors import ModelError
from models.loader import VARIANT_FILES, find_variants

logger = logging.getLogger(__name__)

# Derivation order: cheapest first, so a quick look at the progress shows the pipeline works.
DERIVED_VARIANTS = ("fp16", "int8", "q4", "bnb4")
Q4_BLOCK_SIZE = 32
BNB4_BLOCK_SIZE = 64
_FP16_CLAMP_WARNING = "the float32 number "


@dataclass(frozen=True, slots=True)
class DerivedVariant:
    """One written variant file and what it cost to make."""

    variant: str
    path: Path
    size_bytes: int
    seconds: float


def parse_only(text: str | None) -> tuple[str, ...]:
    """`--only fp16,int8` -> ("fp16", "int8") in derivation order; None or "" means all of them."""
    if not text:
        return DERIVED_VARIANTS
    wanted = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(wanted - set(DERIVED_VARIANTS))
    if unknown or not wanted:
        raise ModelError(f"--only: unknown variant(s) {unknown or [text]}; choose from {', '.join(DERIVED_VARIANTS)}")
    return tuple(v for v in DERIVED_VARIANTS if v in wanted)


def derive_variants(model_dir: Path, only: Sequence[str] = DERIVED_VARIANTS) -> list[DerivedVariant]:
    """Write each requested variant as `model_dir/onnx/<file>` from the fp32 model; return what was written.

    An existing variant file is overwritten. Call it once per variant for progress between them.
    """
    source = find_variants(model_dir).get("fp32") if model_dir.is_dir() else None
    if source is None:
        raise ModelError(f"no fp32 model (onnx/model.onnx or model.onnx) in {model_dir} to derive variants from")
    out_dir = model_dir / "onnx"
    out_dir.mkdir(exist_ok=True)
    written: list[DerivedVariant] = []
    for variant in only:
        target = out_dir / VARIANT_FILES[variant][0]
        started = time.perf_counter()
        _DERIVERS[variant](source, target)
        elapsed = time.perf_counter() - started
        written.append(DerivedVariant(variant, target, target.stat().st_size, elapsed))
        logger.info("derived %s in %.1f s: %s", variant, elapsed, target)
    return written


def to_fp16(source: Path, target: Path) -> None:
    """Float16 weights and compute; float32 input/output kept, so the decode stage feeds it unchanged."""
    from onnxconverter_common import float16

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = float16.convert_float_to_float16(_load(source), keep_io_types=True)
    # The converter warns once per tensor holding a value outside float16's range, which it clamps
    # (|w| < 1e-7 -> ±1e-7, |w| > 1e4 -> ±1e4). On ViT-B/16 that is ~100 lines of noise: summarise them.
    clamped = [w for w in caught if str(w.message).startswith(_FP16_CLAMP_WARNING)]
    for other in caught:
        if other not in clamped:
            warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    if clamped:
        logger.info("fp16: %d weight tensors had values outside float16's range, clamped", len(clamped))
    _save(model, target)


def to_int8(source: Path, target: Path) -> None:
    """Dynamic int8: weights quantised offline, activations per batch (no calibration set needed).

    Signed int8 weights, not uint8: on the x86 CPUs measured they run 1.7× faster with the same accuracy.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_preprocessing_hint():
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            use_external_data_format=_needs_external_data(source),
        )


def to_q4(source: Path, target: Path) -> None:
    """4-bit symmetric block quantisation (block 32) of the MatMul weights into `MatMulNBits` nodes."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=Q4_BLOCK_SIZE, is_symmetric=True)
    quantizer = MatMulNBitsQuantizer(
        _load(source), block_size=Q4_BLOCK_SIZE, is_symmetric=True, algo_config=config
    )  # fmt: skip
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), _needs_external_data(source))


def to_bnb4(source: Path, target: Path) -> None:
    """4-bit NormalFloat (NF4, bitsandbytes' scheme, block 64) of the MatMul weights into `MatMulBnb4` nodes."""
    from onnxruntime.quantization.matmul_bnb4_quantizer import MatMulBnb4Quantizer

    quantizer = MatMulBnb4Quantizer(_load(source), quant_type=MatMulBnb4Quantizer.NF4, block_size=BNB4_BLOCK_SIZE)
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), _needs_external_data(source))


_DERIVERS: dict[str, Callable[[Path, Path], None]] = {
    "fp16": to_fp16,
    "int8": to_int8,
    "q4": to_q4,
    "bnb4": to_bnb4,
}


def _load(path: Path) -> onnx.ModelProto:
    # External weights (`*.onnx_data`) are read from next to the file, as onnx.load does by default.
    return onnx.load(str(path))


def _needs_external_data(source: Path) -> bool:
    return source.stat().st_size > EXTERNAL_DATA_THRESHOLD_BYTES or source.with_suffix(".onnx_data").exists()


def _save(model: onnx.ModelProto, target: Path) -> None:
    external = model.ByteSize() > EXTERNAL_DATA_THRESHOLD_BYTES
    location = f"{target.name}_data" if external else None
    onnx.save_model(model, str(target), save_as_external_data=external, location=location)


class _DropPreprocessingHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing")


@contextmanager
def _quiet_preprocessing_hint() -> Iterator[None]:
    """quantize_dynamic always logs a root-logger WARNING suggesting `quant_pre_process`.

    That step (symbolic shape inference, onnx optimiser) matters most for static quantisation; on the
    graphs built here the same nodes are quantised with or without it, and the warning reads as a fault.
    """
    hint = _DropPreprocessingHint()
    root = logging.getLogger()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)
