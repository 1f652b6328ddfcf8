"""Full-size ViT-B/16: the derived variants match the seed's size table and fp16/int8 agree with fp32 on top-1.

Slow: building, deriving and scoring 128 synthetic images (32 for the 4-bit variants) takes about 5 minutes
on a 2-core AVX2 CPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
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
# 128, not 64: on this set fp32 puts image 43 at p(Fake) = 0.4999 (margin 0.0002), and fp16's 0.0003 error
# flips it; one coin-flip image in 64 would read as 98.4 % agreement. Measured on the first 256 images of
# the set: fp16 99.6 % (that one image, max |Δprob| 0.0003), int8 99.6 % (max |Δprob| 0.029); on 128 images
# fp16 99.2 %, int8 100 %.
SYNTHETIC_IMAGES = 128
# The 4-bit variants are only checked on max |Δprob| (not top-1), for which 32 images suffice; a 128-image
# pass of one ViT-B/16 variant costs about 75 s on this 2-core CPU.
IMAGES_4BIT = 32
MIN_TOP1_PCT = {"fp16": 99.0, "int8": 99.0}
# Most images are top-1 Real on random weights, so top-1 agreement alone would pass a model stuck on Real;
# the probability error is the sharper check (measured: fp16 0.0003, int8 0.03, q4 0.10, bnb4 0.10).
MAX_ABS_DPROB = {"fp16": 0.001, "int8": 0.06, "q4": 0.2, "bnb4": 0.2}


@pytest.fixture(scope="module")
def vitb16_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = build_model_dir("vit-b16", tmp_path_factory.mktemp("vit-b16"))
    derive_variants(path)
    return path


@pytest.fixture(scope="module")
def probs(vitb16_dir: Path) -> Callable[[str], np.ndarray]:
    """Probabilities of a variant on the fixed synthetic set, computed on first use (spreads the cost over tests)."""
    images = synthetic_images(SYNTHETIC_IMAGES, resolve_model(vitb16_dir, "fp32").preprocess, seed=0)

    @functools.cache
    def of(variant: str) -> np.ndarray:
        count = IMAGES_4BIT if variant in ("q4", "bnb4") else SYNTHETIC_IMAGES
        return predict(open_session(resolve_model(vitb16_dir, variant).onnx_path), images[:count])

    return of


@pytest.mark.parametrize("variant", list(SEED_SIZES_MB))
def test_variant_size_is_within_10_percent_of_the_seed_table(vitb16_dir: Path, variant: str) -> None:
    size_mb = resolve_model(vitb16_dir, variant).onnx_path.stat().st_size / 1e6
    assert size_mb == pytest.approx(SEED_SIZES_MB[variant], rel=SIZE_TOLERANCE)


def test_the_synthetic_set_exercises_both_classes(probs: Callable[[str], np.ndarray]) -> None:
    assert set(probs("fp32").argmax(axis=1)) == {0, 1}


@pytest.mark.parametrize("variant", list(MIN_TOP1_PCT))
def test_variant_agrees_with_fp32_on_top1_for_at_least_99_percent(
    probs: Callable[[str], np.ndarray], variant: str
) -> None:
    max_delta, agreement = compare(probs("fp32"), probs(variant))
    assert agreement >= MIN_TOP1_PCT[variant], f"{variant}: top-1 {agreement:.1f} %, max |Δprob| {max_delta:.4f}"


@pytest.mark.parametrize("variant", list(MAX_ABS_DPROB))
def test_variant_probabilities_stay_close_to_fp32(probs: Callable[[str], np.ndarray], variant: str) -> None:
    scored = probs(variant)
    max_delta, agreement = compare(probs("fp32")[: len(scored)], scored)
    assert np.isfinite(scored).all()
    assert max_delta < MAX_ABS_DPROB[variant], f"{variant}: max |Δprob| {max_delta:.4f}, top-1 {agreement:.1f} %"


def test_the_full_directory_validates(vitb16_dir: Path) -> None:
    assert validate_model_dir(vitb16_dir).variants == ("fp32", "fp16", "int8", "q4", "bnb4")
