"""Bench workload: the synthetic event mix every bench stage measures, and the model directories it runs.

Every stage (decode alone, pipeline in process, the naive baseline, end to end) sees the same events, taken
from `devtools.samples.sample_events` and kept to the requested image formats (JPEG by default), so the
ratios between stages compare like with like.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from devtools.samples import SampleEvent, sample_events
from models.loader import bundled_model_dir, find_variants
from processor.errors import ConfigError
from processor.inflight import InFlight

log = logging.getLogger(__name__)

_MAGIC = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG", "webp": b"RIFF"}
# The first 64 base64 characters decode to 48 bytes: enough for any magic number above.
_B64_HEAD = 64
MIX_DESCRIPTION = (
    "synthetic photos-like images from devtools.samples.sample_events (seed 0), sizes cycled in the order "
    "given, kept to the listed formats (JPEG q90 by default); 4 of 5 events are JSON envelopes with base64 "
    "images and 1 of 5 raw image bytes with an event_id header; 1 of 3 carries one face box (a third of "
    "the width, half the height); one crop is scored per event, so images/s = events/s"
)


def image_format(event: SampleEvent) -> str:
    """The image format of a sample event ("jpeg", "png", "webp" or "other"), from its magic bytes."""
    head = event.value[:16]
    if event.kind == "json":
        encoded = json.loads(event.value).get("image_b64", "")
        head = base64.b64decode(encoded[:_B64_HEAD]) if encoded else b""
    return next((name for name, magic in _MAGIC.items() if head.startswith(magic)), "other")


def iter_events(
    count: int, sizes: Sequence[tuple[int, int]], formats: Sequence[str], *, prefix: str = "b", seed: int = 0
) -> Iterator[SampleEvent]:
    """`count` valid events of the wanted formats (event ids `<prefix>-<n>`), generated lazily."""
    wanted = set(formats)
    # sample_events cycles JPEG, JPEG, PNG, WebP: a quarter of its events is the rarest format.
    source = sample_events(count * 4 + 16, seed=seed, sizes=tuple(sizes), prefix=prefix)
    yielded = 0
    for event in source:
        if yielded >= count:
            return
        if image_format(event) in wanted:
            yielded += 1
            yield event
    raise RuntimeError(f"sample_events ran out before {count} events of formats {sorted(wanted)}")


def relabelled(pool: Sequence[SampleEvent], count: int, prefix: str) -> Iterator[SampleEvent]:
    """`count` events cycled from a pre-generated pool, each with a fresh event id `<prefix>-<n>`.

    Generating and encoding images costs more CPU than the processor spends scoring them (the source makes
    four candidates per JPEG kept); a paced producer doing that on the same cores as the processor skews the
    latency it measures, so the Kafka stages send copies of one pool with only the id rewritten.
    """
    if not pool:
        raise ValueError("relabelled: empty event pool")
    for n in range(count):
        yield with_event_id(pool[n % len(pool)], f"{prefix}-{n}")


def with_event_id(event: SampleEvent, event_id: str) -> SampleEvent:
    """The same event under a new id: in the JSON envelope's first field, or in the raw event's header."""
    if event.kind == "json":
        head = event.value[: event.value.index(b",")]  # json_event writes event_id first: {"event_id": "…",
        if not head.startswith(b'{"event_id": "'):
            raise ValueError(f"not a sample JSON event: {head[:40]!r}")
        return replace(event, value=b'{"event_id": "' + event_id.encode() + b'"' + event.value[len(head) :])
    headers = [(k, event_id.encode() if k == "event_id" else v) for k, v in event.headers]
    return replace(event, headers=headers)


def to_inflight(event: SampleEvent, offset: int, topic: str = "bench") -> InFlight:
    """A fresh InFlight for an in-process stage (as the consumer would admit it)."""
    return InFlight(topic=topic, partition=0, offset=offset, key=event.key, value=event.value,
                    headers=list(event.headers) or None, timestamp_ms=None)  # fmt: skip


def model_cache_dir(arch: str) -> Path:
    """Where a built model directory for `arch` is kept between runs."""
    return Path.home() / ".cache" / "deepfake-processor" / "models" / arch


def prepare_model_dir(model_dir: str | None, arch: str | None, variants: Sequence[str] | None) -> Path:
    """The model directory to bench: `--model-dir`, else a cached build of `--arch`, else the bundled model.

    A built directory gets the requested variants (int8 when none are named: the fast one on CPU).
    """
    if model_dir:
        return Path(model_dir)
    if not arch or arch == "vit-tiny":
        return bundled_model_dir()
    target = model_cache_dir(arch)
    if not (target / "config.json").is_file():
        _build(arch, target)
    missing = [v for v in (variants or ["int8"]) if v not in find_variants(target)]
    if missing:
        derive(target, missing)
    return target


def _build(arch: str, target: Path) -> None:
    from models.builder import build_model_dir  # needs the [models] extra (onnx)

    print(f"building {arch} into {target} (once; cached afterwards)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=target.parent))
    try:
        build_model_dir(arch, staging, seed=0)
        staging.rename(target)  # atomic: a half-built directory is never mistaken for a cached one
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def derive(model_dir: Path, variants: Sequence[str]) -> None:
    """Write the missing variants from fp32: with models.variants when present, else int8 via quantize_dynamic."""
    print(f"deriving {', '.join(variants)} for {model_dir.name} (once; cached afterwards)")
    if _derive_with_models_variants(model_dir, variants):
        return
    if set(variants) != {"int8"}:
        raise ConfigError(f"deriving {', '.join(variants)} needs models.variants (the [models] extra)")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = model_dir / "onnx" / "model_int8.onnx"
    partial = out.with_suffix(".partial.onnx")
    # Signed int8 weights: 1.7x faster than uint8 on the x86 CPUs measured, same accuracy.
    quantize_dynamic(find_variants(model_dir)["fp32"], partial, weight_type=QuantType.QInt8)
    partial.rename(out)


def _derive_with_models_variants(model_dir: Path, variants: Sequence[str]) -> bool:
    """Use the project's own variant builder (models.variants.derive_variants) when it is there."""
    if importlib.util.find_spec("models.variants") is None:
        return False
    derive_variants = getattr(importlib.import_module("models.variants"), "derive_variants", None)
    if derive_variants is None:
        return False
    derive_variants(model_dir, list(variants))
    return all(v in find_variants(model_dir) for v in variants)
