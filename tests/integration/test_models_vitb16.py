"""Full-size ViT-B/16: the derived variants match the seed's size table and fp16/int8 agree with fp32 on top-1.

Slow: building, deriving and scoring 64 images with five 50–340 MB variants takes a few minutes on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.builder import build_model_dir
from models.inspect import compare, predict
from models.loader import resolve_model
from models.validate import open_session, synthetic_images, validate_model_dir
from models.variants import derive_variants

pytestmark = pytest.mark.slow

# The seed project's table of FaceSocial's ViT-B/16 directory, MB (10^6 bytes).
SEED_SIZES_MB = {"fp32": 343, "fp16": 171, "int8": 87, "q4": 56, "bnb4": 51}
SIZE_TOLERANCE = 0.10
SYNTHETIC_IMAGES = 64
# Measured on this set: fp16 and int8 100 %; q4 and bnb4 also agree on every image (FACTS.md: margins on
# random ViT-B/16 weights are wide). The 4-bit bound leaves room for a flip or two without hiding a broken
# quantizer, which lands near 50 %.
MIN_TOP1_PCT = {"fp16": 99.0, "int8": 99.0, "q4": 95.0, "bnb4": 95.0}


@pytest.fixture(scope="module")
def vitb16_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = build_model_dir("vit-b16", tmp_path_factory.mktemp("vit-b16"))
    derive_variants(path)
    return path


@pytest.fixture(scope="module")
def probs(vitb16_dir: Path) -> dict[str, np.ndarray]:
    images = synthetic_images(SYNTHETIC_IMAGES, resolve_model(vitb16_dir, "fp32").preprocess, seed=0)
    return {v: predict(open_session(resolve_model(vitb16_dir, v).onnx_path), images) for v in SEED_SIZES_MB}


@pytest.mark.parametrize("variant", list(SEED_SIZES_MB))
def test_variant_size_is_within_10_percent_of_the_seed_table(vitb16_dir: Path, variant: str) -> None:
    size_mb = resolve_model(vitb16_dir, variant).onnx_path.stat().st_size / 1e6
    assert size_mb == pytest.approx(SEED_SIZES_MB[variant], rel=SIZE_TOLERANCE)


@pytest.mark.parametrize("variant", list(MIN_TOP1_PCT))
def test_variant_agrees_with_fp32_on_top1(probs: dict[str, np.ndarray], variant: str) -> None:
    max_delta, agreement = compare(probs["fp32"], probs[variant])
    assert np.isfinite(probs[variant]).all()
    assert agreement >= MIN_TOP1_PCT[variant], f"{variant}: top-1 {agreement:.1f} %, max |Δprob| {max_delta:.4f}"


def test_the_full_directory_validates(vitb16_dir: Path) -> None:
    assert validate_model_dir(vitb16_dir).variants == ("fp32", "fp16", "int8", "q4", "bnb4")
