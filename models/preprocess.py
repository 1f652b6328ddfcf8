"""Parse a Hugging Face / transformers.js `preprocessor_config.json` into what the decode stage needs.

Missing keys take the Hugging Face `ViTImageProcessor` defaults (224×224, bilinear, rescale 1/255,
mean = std = 0.5). Rescale and normalise are folded into one per-channel `scale` and `bias`, so the
hot path does a single multiply-add per pixel.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.errors import ModelError

# PIL resampling codes (what HF configs store) -> OpenCV interpolation flags. PIL's BOX (4) is
# area averaging; PIL's HAMMING (5) has no OpenCV counterpart, bilinear is the closest.
PIL_TO_CV2: dict[int, int] = {
    0: cv2.INTER_NEAREST,
    1: cv2.INTER_LANCZOS4,
    2: cv2.INTER_LINEAR,
    3: cv2.INTER_CUBIC,
    4: cv2.INTER_AREA,
    5: cv2.INTER_LINEAR,
}
DEFAULT_SIZE = 224
DEFAULT_RESAMPLE = 2
DEFAULT_RESCALE_FACTOR = 1 / 255
DEFAULT_MEAN_STD = 0.5


@dataclass(frozen=True, slots=True)
class PreprocessConfig:
    """How one RGB uint8 image becomes one float32 CHW tensor for the model."""

    height: int  # final tensor height
    width: int  # final tensor width
    # Set when `size` is {"shortest_edge": S}: resize so the short side is S keeping the aspect ratio,
    # then centre-crop to height×width.
    resize_shortest_edge: int | None
    do_resize: bool
    resample: int  # an OpenCV interpolation flag (cv2.INTER_*), mapped from the PIL code
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    def scale_and_bias(self) -> tuple[np.ndarray, np.ndarray]:
        """Float32 (3,) arrays such that `tensor = uint8_pixel * scale + bias` is rescale then normalise."""
        rescale = self.rescale_factor if self.do_rescale else 1.0
        mean = np.array(self.image_mean if self.do_normalize else (0.0, 0.0, 0.0), dtype=np.float64)
        std = np.array(self.image_std if self.do_normalize else (1.0, 1.0, 1.0), dtype=np.float64)
        # Folded in float64 and rounded once: matches ((p * r) - m) / s to float32 precision.
        return (rescale / std).astype(np.float32), (-mean / std).astype(np.float32)


def read_json(path: Path, what: str) -> Any:
    """A model directory's JSON file; unreadable or invalid → ModelError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON: {exc}") from exc


def load_preprocess_config(path: Path) -> PreprocessConfig:
    """Read and validate `preprocessor_config.json`; any problem is a ModelError naming the file and key."""
    data = read_json(path, "preprocessor config")
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return parse_preprocess_config(data, str(path))


def default_preprocess_config() -> PreprocessConfig:
    """The Hugging Face ViTImageProcessor defaults, for a bare .onnx file without a config."""
    return parse_preprocess_config({}, "<defaults>")


def parse_preprocess_config(data: Mapping[str, Any], source: str) -> PreprocessConfig:
    """Validate an already-parsed config mapping; `source` names it in error messages."""
    height, width, shortest_edge = _parse_size(data, source)
    resample = data.get("resample", DEFAULT_RESAMPLE)
    if isinstance(resample, bool) or resample not in PIL_TO_CV2:
        raise ModelError(f"{source}: key 'resample' must be a PIL resampling code 0-5, got {resample!r}")
    rescale_factor = _number(data.get("rescale_factor", DEFAULT_RESCALE_FACTOR), source, "rescale_factor")
    image_std = _triple(data.get("image_std", DEFAULT_MEAN_STD), source, "image_std")
    if any(s == 0 for s in image_std):
        raise ModelError(f"{source}: key 'image_std' must not contain 0, got {list(image_std)}")
    return PreprocessConfig(
        height=height,
        width=width,
        resize_shortest_edge=shortest_edge,
        do_resize=_flag(data, "do_resize", source),
        resample=PIL_TO_CV2[resample],
        do_rescale=_flag(data, "do_rescale", source),
        rescale_factor=rescale_factor,
        do_normalize=_flag(data, "do_normalize", source),
        image_mean=_triple(data.get("image_mean", DEFAULT_MEAN_STD), source, "image_mean"),
        image_std=image_std,
    )


def _parse_size(data: Mapping[str, Any], source: str) -> tuple[int, int, int | None]:
    """(height, width, shortest_edge or None) from `size` and, for shortest-edge configs, `crop_size`."""
    size = data.get("size", DEFAULT_SIZE)
    if _is_dimension(size):
        # Old-style HF configs: a plain int means resize to S×S.
        return size, size, None
    if _is_height_width(size):
        return (*_height_width(size, source, "size"), None)
    if isinstance(size, dict) and set(size) == {"shortest_edge"}:
        edge = _dimension(size["shortest_edge"], source, "size.shortest_edge")
        crop = data.get("crop_size")
        if crop is None:
            return edge, edge, edge
        if _is_dimension(crop):
            return crop, crop, edge
        if _is_height_width(crop):
            return (*_height_width(crop, source, "crop_size"), edge)
        raise ModelError(f"{source}: key 'crop_size' must be an int or {{height, width}}, got {crop!r}")
    raise ModelError(f"{source}: key 'size' must be an int, {{height, width}} or {{shortest_edge}}, got {size!r}")


def _is_height_width(value: Any) -> bool:
    return isinstance(value, dict) and "height" in value and "width" in value


def _height_width(value: Mapping[str, Any], source: str, key: str) -> tuple[int, int]:
    return _dimension(value["height"], source, f"{key}.height"), _dimension(value["width"], source, f"{key}.width")


def _is_dimension(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _dimension(value: Any, source: str, key: str) -> int:
    if not _is_dimension(value):
        raise ModelError(f"{source}: key '{key}' must be a positive integer, got {value!r}")
    return int(value)


def _number(value: Any, source: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ModelError(f"{source}: key '{key}' must be a finite number, got {value!r}")
    return float(value)


def _triple(value: Any, source: str, key: str) -> tuple[float, float, float]:
    """A per-channel value given as one number for all channels or a list of 3."""
    if isinstance(value, list) and len(value) == 3:
        r, g, b = (_number(v, source, key) for v in value)
        return r, g, b
    if isinstance(value, list):
        raise ModelError(f"{source}: key '{key}' must be a number or a list of 3 numbers, got {value!r}")
    one = _number(value, source, key)
    return one, one, one


def _flag(data: Mapping[str, Any], key: str, source: str) -> bool:
    value = data.get(key, True)
    if not isinstance(value, bool):
        raise ModelError(f"{source}: key '{key}' must be true or false, got {value!r}")
    return value
