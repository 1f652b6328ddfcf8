"""Preprocessing numbers: RGB order, rescale + normalise, resize/crop shapes, face crops, pixel guard."""

from __future__ import annotations

import base64
import json
from typing import Any

import cv2
import numpy as np
import pytest

from models.preprocess import parse_preprocess_config
from processor import decode as decode_module
from processor.decode import DecodeLimits, Decoder, Preprocessor
from processor.errors import FaceOutOfBounds, ImageTooManyPixels
from processor.inflight import InFlight
from tests.corpus import encode, noise, patch_png_dims, png_bytes

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# A 2×2 RGB image with every channel different, so a channel or pixel mix-up changes the numbers.
TINY_RGB = np.array(
    [[[255, 0, 10], [128, 64, 32]], [[0, 255, 200], [17, 99, 250]]],
    dtype=np.uint8,
)


def _pre(**config: Any) -> Preprocessor:
    return Preprocessor(parse_preprocess_config(config, "<test>"))


def _decoder(pre: Preprocessor, max_image_pixels: int = 50_000_000) -> Decoder:
    return Decoder(pre, DecodeLimits(max_image_bytes=1 << 26, max_image_pixels=max_image_pixels, max_faces=64), None)


def _item(value: bytes) -> InFlight:
    return InFlight(topic="t", partition=0, offset=0, key=None, value=value, headers=None, timestamp_ms=None)


def _reference(rgb: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """What HF's ViTImageProcessor does, written out: rescale by 1/255, subtract mean, divide by std, to CHW."""
    x = rgb.astype(np.float64) / 255.0
    x = (x - np.array(mean)) / np.array(std)
    return x.transpose(2, 0, 1)


def _tensor(pre: Preprocessor, rgb: np.ndarray) -> np.ndarray:
    out = np.empty(pre.shape, dtype=np.float32)
    pre.to_tensor(rgb, out)
    return out


@pytest.mark.parametrize(
    ("mean", "std"),
    [([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]), (IMAGENET_MEAN, IMAGENET_STD)],
    ids=["half", "imagenet"],
)
def test_to_tensor_matches_hand_computed_rescale_and_normalise(mean: list[float], std: list[float]) -> None:
    pre = _pre(size={"height": 2, "width": 2}, image_mean=mean, image_std=std)
    got = _tensor(pre, TINY_RGB)
    assert got.shape == (3, 2, 2) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(TINY_RGB, mean, std), rtol=0, atol=1e-5)


def test_half_mean_std_maps_0_and_255_to_minus_one_and_one() -> None:
    pre = _pre(size={"height": 2, "width": 2})
    got = _tensor(pre, TINY_RGB)
    assert got[0, 0, 0] == pytest.approx(1.0, abs=1e-6)  # R of pixel (0,0) is 255
    assert got[1, 0, 0] == pytest.approx(-1.0, abs=1e-6)  # G of pixel (0,0) is 0


def test_do_rescale_and_do_normalize_false_pass_raw_pixel_values() -> None:
    pre = _pre(size={"height": 2, "width": 2}, do_rescale=False, do_normalize=False)
    np.testing.assert_array_equal(_tensor(pre, TINY_RGB), TINY_RGB.transpose(2, 0, 1).astype(np.float32))


def test_uniform_image_resized_keeps_its_values() -> None:
    rgb = np.empty((37, 53, 3), np.uint8)
    rgb[...] = (200, 100, 50)
    got = _tensor(_pre(size={"height": 8, "width": 8}), rgb)
    expected = _reference(np.array([[[200, 100, 50]]], np.uint8), [0.5] * 3, [0.5] * 3)[:, 0, 0]
    np.testing.assert_allclose(got, np.broadcast_to(expected[:, None, None], (3, 8, 8)), atol=1e-5)


def test_pure_red_png_ends_up_in_channel_zero() -> None:
    bgr = np.zeros((16, 16, 3), np.uint8)
    bgr[..., 2] = 255  # OpenCV writes BGR: this is pure red
    pre = _pre(size={"height": 8, "width": 8})
    item = _item(encode(".png", bgr))
    _decoder(pre).decode(item)
    assert item.crops is not None and item.crops.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(item.crops[0, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(item.crops[0, 1:], -1.0, atol=1e-6)


def test_shortest_edge_resize_then_centre_crop() -> None:
    # 8×16, shortest edge 8: no scaling, so the centre crop to 8×8 must be columns 4..11.
    columns = np.arange(16, dtype=np.uint8) * 10
    rgb = np.repeat(np.repeat(columns[None, :, None], 8, axis=0), 3, axis=2)
    pre = _pre(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}, resample=0,
               do_rescale=False, do_normalize=False)  # fmt: skip
    got = _tensor(pre, rgb)
    assert got.shape == (3, 8, 8)
    np.testing.assert_array_equal(got[0, 0], columns[4:12].astype(np.float32))


@pytest.mark.parametrize(("height", "width"), [(300, 500), (500, 300), (100, 100), (7, 900)])
def test_shortest_edge_output_has_the_crop_shape(height: int, width: int) -> None:
    pre = _pre(size={"shortest_edge": 32}, crop_size={"height": 24, "width": 28})
    assert _tensor(pre, noise(height, width)).shape == (3, 24, 28)


def _face_event(bgr: np.ndarray, faces: list[dict[str, int]]) -> InFlight:
    doc = {"event_id": "e-faces", "image_b64": base64.b64encode(encode(".png", bgr)).decode(), "faces": faces}
    return _item(json.dumps(doc).encode())


def test_face_box_partly_outside_is_clipped_to_the_image() -> None:
    bgr = noise(64, 64)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    pre = _pre(size={"height": 8, "width": 8})
    item = _face_event(bgr, [{"x": -10, "y": 50, "width": 30, "height": 40}])
    _decoder(pre).decode(item)
    assert item.crops is not None and item.crops.shape == (1, 3, 8, 8)
    np.testing.assert_array_equal(item.crops[0], _tensor(pre, rgb[50:64, 0:20]))


def test_each_face_box_gets_its_own_row_in_box_order() -> None:
    bgr = noise(64, 64)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    pre = _pre(size={"height": 8, "width": 8})
    item = _face_event(
        bgr, [{"x": 0, "y": 0, "width": 10, "height": 10}, {"x": 30, "y": 30, "width": 20, "height": 20}]
    )
    _decoder(pre).decode(item)
    assert item.crops is not None and item.crops.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(item.crops[0], _tensor(pre, rgb[0:10, 0:10]))
    np.testing.assert_array_equal(item.crops[1], _tensor(pre, rgb[30:50, 30:50]))


@pytest.mark.parametrize(
    "box",
    [
        {"x": 64, "y": 0, "width": 10, "height": 10},
        {"x": 0, "y": 100, "width": 10, "height": 10},
        {"x": -20, "y": 0, "width": 20, "height": 10},
    ],
)
def test_face_box_wholly_outside_is_face_out_of_bounds(box: dict[str, int]) -> None:
    with pytest.raises(FaceOutOfBounds) as info:
        _decoder(_pre(size={"height": 8, "width": 8})).decode(_face_event(noise(64, 64), [box]))
    assert info.value.code == "face_out_of_bounds"


@pytest.fixture
def imdecode_flags(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the flags of every cv2.imdecode call the decoder makes."""
    flags: list[int] = []
    real_imdecode = cv2.imdecode

    def spy(buf: np.ndarray, flag: int) -> Any:
        flags.append(flag)
        return real_imdecode(buf, flag)

    monkeypatch.setattr(decode_module.cv2, "imdecode", spy)
    return flags


def test_large_jpeg_decodes_through_the_reduced_path_to_the_model_shape(imdecode_flags: list[int]) -> None:
    bgr = np.zeros((1500, 2000, 3), np.uint8)
    bgr[..., 2] = 255  # red, to check the reduced path also converts BGR → RGB
    pre = _pre()  # 224×224 defaults
    assert pre.reduction_for(2000, 1500) == 4
    item = _item(encode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95]))
    _decoder(pre).decode(item)
    assert imdecode_flags == [cv2.IMREAD_REDUCED_COLOR_4]
    assert item.crops is not None and item.crops.shape == (1, 3, 224, 224)
    assert item.crops[0, 0].mean() > 0.95 and item.crops[0, 1:].mean() < -0.95


def test_face_boxes_on_a_reduced_jpeg_crop_the_right_regions(imdecode_flags: list[int]) -> None:
    bgr = np.zeros((1600, 2000, 3), np.uint8)
    bgr[:, :1000, 2] = 255  # left half red
    bgr[:, 1000:, 0] = 255  # right half blue
    doc = {
        "event_id": "e-big-faces",
        "image_b64": base64.b64encode(encode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])).decode(),
        "faces": [
            {"x": 1200, "y": 400, "width": 600, "height": 600},
            {"x": 100, "y": 900, "width": 700, "height": 600},
        ],
    }
    item = _item(json.dumps(doc).encode())
    _decoder(_pre()).decode(item)
    assert imdecode_flags == [cv2.IMREAD_REDUCED_COLOR_2]  # the smallest face (600 px) still has ≥ 224 px at 1/2
    assert item.crops is not None and item.crops.shape == (2, 3, 224, 224)
    blue, red = item.crops[0], item.crops[1]
    assert blue[2].mean() > 0.95 and blue[0].mean() < -0.95
    assert red[0].mean() > 0.95 and red[2].mean() < -0.95


def test_header_declaring_too_many_pixels_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_decode(*_: Any) -> None:
        raise AssertionError("cv2.imdecode called for an image over MAX_IMAGE_PIXELS")

    monkeypatch.setattr(decode_module.cv2, "imdecode", must_not_decode)
    bomb = patch_png_dims(png_bytes(8, 8), 2000, 2000)
    with pytest.raises(ImageTooManyPixels) as info:
        _decoder(_pre(), max_image_pixels=1_000_000).decode(_item(bomb))
    assert info.value.code == "image_too_many_pixels"


def test_image_at_the_pixel_limit_is_decoded() -> None:
    item = _item(png_bytes(100, 100))
    _decoder(_pre(size={"height": 8, "width": 8}), max_image_pixels=10_000).decode(item)
    assert item.crops is not None and item.crops.shape == (1, 3, 8, 8)
