"""preprocessor_config.json parsing: HF and transformers.js shapes, defaults, and precise errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from models.errors import ModelError
from models.preprocess import PreprocessConfig, default_preprocess_config, load_preprocess_config

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _load(tmp_path: Path, data: Any) -> PreprocessConfig:
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(data))
    return load_preprocess_config(path)


def test_height_width_size_gives_a_plain_resize(tmp_path: Path) -> None:
    config = _load(tmp_path, {"size": {"height": 384, "width": 256}})
    assert (config.height, config.width, config.resize_shortest_edge) == (384, 256, None)


def test_shortest_edge_size_resizes_then_crops_to_crop_size(tmp_path: Path) -> None:
    config = _load(tmp_path, {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}})
    assert (config.height, config.width, config.resize_shortest_edge) == (224, 224, 256)


def test_shortest_edge_without_crop_size_crops_a_square_of_that_edge(tmp_path: Path) -> None:
    config = _load(tmp_path, {"size": {"shortest_edge": 224}})
    assert (config.height, config.width, config.resize_shortest_edge) == (224, 224, 224)


def test_plain_int_size_from_old_configs_means_square(tmp_path: Path) -> None:
    config = _load(tmp_path, {"size": 160})
    assert (config.height, config.width, config.resize_shortest_edge) == (160, 160, None)


def test_missing_keys_take_hf_vit_image_processor_defaults(tmp_path: Path) -> None:
    config = _load(tmp_path, {})
    assert config == default_preprocess_config()
    assert (config.height, config.width) == (224, 224)
    assert config.resample == cv2.INTER_LINEAR
    assert config.do_resize and config.do_rescale and config.do_normalize
    assert config.rescale_factor == pytest.approx(1 / 255)
    assert config.image_mean == config.image_std == (0.5, 0.5, 0.5)


def test_scalar_mean_and_std_apply_to_every_channel(tmp_path: Path) -> None:
    config = _load(tmp_path, {"image_mean": 0.4, "image_std": 0.2})
    assert config.image_mean == (0.4, 0.4, 0.4)
    assert config.image_std == (0.2, 0.2, 0.2)


def test_transformers_js_imagenet_config_is_read_exactly(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        {
            "crop_size": {"height": 224, "width": 224},
            "do_center_crop": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "feature_extractor_type": "ViTFeatureExtractor",
            "image_mean": IMAGENET_MEAN,
            "image_std": IMAGENET_STD,
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "size": {"shortest_edge": 256},
        },
    )
    assert config.image_mean == tuple(IMAGENET_MEAN)
    assert config.image_std == tuple(IMAGENET_STD)
    assert config.resample == cv2.INTER_CUBIC
    assert (config.height, config.width, config.resize_shortest_edge) == (224, 224, 256)


@pytest.mark.parametrize(
    ("pil", "cv"),
    [
        (0, cv2.INTER_NEAREST),
        (1, cv2.INTER_LANCZOS4),
        (2, cv2.INTER_LINEAR),
        (3, cv2.INTER_CUBIC),
        (4, cv2.INTER_AREA),
        (5, cv2.INTER_LINEAR),
    ],
)
def test_pil_resample_codes_map_to_opencv_flags(tmp_path: Path, pil: int, cv: int) -> None:
    assert _load(tmp_path, {"resample": pil}).resample == cv


def test_scale_and_bias_reproduce_rescale_then_normalise() -> None:
    scale, bias = default_preprocess_config().scale_and_bias()
    assert scale.dtype == bias.dtype == np.float32
    assert scale.shape == bias.shape == (3,)
    pixels = np.arange(256, dtype=np.float32)[:, None].repeat(3, axis=1)
    expected = ((pixels / 255.0) - 0.5) / 0.5
    np.testing.assert_allclose(pixels * scale + bias, expected, rtol=0, atol=1e-6)


def test_scale_and_bias_with_imagenet_statistics(tmp_path: Path) -> None:
    config = _load(tmp_path, {"image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD})
    scale, bias = config.scale_and_bias()
    pixels = np.arange(256, dtype=np.float64)[:, None].repeat(3, axis=1)
    expected = ((pixels / 255.0) - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(pixels.astype(np.float32) * scale + bias, expected, rtol=0, atol=1e-5)


def test_disabled_rescale_and_normalise_drop_out_of_scale_and_bias(tmp_path: Path) -> None:
    scale, bias = _load(tmp_path, {"do_rescale": False, "do_normalize": False}).scale_and_bias()
    np.testing.assert_array_equal(scale, [1, 1, 1])
    np.testing.assert_array_equal(bias, [0, 0, 0])
    scale, bias = _load(tmp_path, {"do_normalize": False}).scale_and_bias()
    np.testing.assert_allclose(scale, [1 / 255] * 3)
    np.testing.assert_array_equal(bias, [0, 0, 0])


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"image_mean": [0.5, 0.5]}, "image_mean"),
        ({"image_std": "0.5"}, "image_std"),
        ({"image_std": [0.5, 0, 0.5]}, "image_std"),
        ({"size": {"longest_edge": 224}}, "size"),
        ({"size": {"height": 0, "width": 224}}, "size.height"),
        ({"size": {"shortest_edge": 256}, "crop_size": "x"}, "crop_size"),
        ({"resample": 9}, "resample"),
        ({"do_resize": "yes"}, "do_resize"),
        ({"rescale_factor": None}, "rescale_factor"),
    ],
)
def test_invalid_values_raise_config_error_naming_file_and_key(tmp_path: Path, data: Any, key: str) -> None:
    with pytest.raises(ModelError, match=re.escape(f"preprocessor_config.json: key '{key}'")):
        _load(tmp_path, data)


def test_missing_or_malformed_file_raises_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"nope\.json: cannot read"):
        load_preprocess_config(tmp_path / "nope.json")
    bad = tmp_path / "preprocessor_config.json"
    bad.write_text("{not json")
    with pytest.raises(ModelError, match=r"preprocessor_config\.json: not valid JSON"):
        load_preprocess_config(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ModelError, match="expected a JSON object"):
        load_preprocess_config(bad)
