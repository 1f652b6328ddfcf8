"""Input-safety corpus: events the processor must dead-letter (with their code) and images it must score.

Deterministic (seeded noise, fixed encoders) so a failure names the same bytes on every run. Pillow is used
here only to make the images OpenCV cannot write (CMYK, EXIF orientation, GIF); it is a test dependency.
"""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

SEED = 20261124
JSON_HEADERS: list[tuple[str, bytes]] = [("content-type", b"application/json")]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class BadCase:
    """One Kafka value (with optional headers) and the DLQ `error.code` it must produce."""

    name: str
    value: bytes
    headers: list[tuple[str, bytes]] | None
    expected_code: str


# --- image makers -------------------------------------------------------------------------------------------


def noise(height: int, width: int, channels: int = 3, *, seed: int = SEED) -> np.ndarray:
    """Seeded uint8 noise over a gradient, so encoders produce realistic (not trivially compressed) data."""
    rng = np.random.default_rng(seed)
    shape = (height, width, channels) if channels > 1 else (height, width)
    ramp = np.linspace(0, 200, width, dtype=np.float32)
    ramp = ramp[None, :, None] if channels > 1 else ramp[None, :]
    return np.clip(ramp + rng.integers(0, 56, size=shape), 0, 255).astype(np.uint8)


def encode(ext: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    """Encode with OpenCV (`ext` like ".png")."""
    ok, buf = cv2.imencode(ext, image, params or [])
    assert ok, f"cv2 could not encode {ext}"
    return buf.tobytes()


def png_bytes(height: int = 64, width: int = 64) -> bytes:
    return encode(".png", noise(height, width))


def jpeg_bytes(height: int = 64, width: int = 64) -> bytes:
    return encode(".jpg", noise(height, width), [cv2.IMWRITE_JPEG_QUALITY, 90])


def pillow_bytes(image: Image.Image, fmt: str, **save: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def exif_rotated_jpeg(height: int = 48, width: int = 64, orientation: int = 6) -> bytes:
    """A JPEG stored width×height whose EXIF says to rotate it (6: 90° clockwise on display)."""
    image = Image.fromarray(noise(height, width)[:, :, ::-1].copy())
    exif = Image.Exif()
    exif[0x0112] = orientation
    return pillow_bytes(image, "JPEG", quality=90, exif=exif.tobytes())


def gif_bytes() -> bytes:
    return pillow_bytes(Image.fromarray(noise(16, 16)), "GIF")


def patch_png_dims(png: bytes, width: int, height: int) -> bytes:
    """Rewrite IHDR's width/height and its CRC, so the file stays a valid small PNG that declares big dims."""
    assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR"
    ihdr = png[16:29]
    ihdr = struct.pack(">II", width, height) + ihdr[8:]
    crc = zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF
    return png[:16] + ihdr + struct.pack(">I", crc) + png[33:]


def patch_jpeg_dims(jpeg: bytes, width: int, height: int) -> bytes:
    """Rewrite the first SOFn segment's height/width (16-bit each, so at most 65535)."""
    pos = 2
    while pos + 4 <= len(jpeg):
        marker = jpeg[pos + 1]
        (length,) = struct.unpack_from(">H", jpeg, pos + 2)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            dims = pos + 5  # marker (2) + length (2) + precision (1)
            return jpeg[:dims] + struct.pack(">HH", height, width) + jpeg[dims + 4 :]
        pos += 2 + length
    raise AssertionError("no SOFn segment found")


def patch_bmp_dims(bmp: bytes, width: int, height: int) -> bytes:
    """Rewrite a BITMAPINFOHEADER's width/height (signed 32-bit)."""
    return bmp[:18] + struct.pack("<ii", width, height) + bmp[26:]


def good_images() -> dict[str, bytes]:
    """Images that MUST be scored, never dead-lettered: odd modes, depths, orientations and every format."""
    rgba = np.dstack([noise(32, 48), np.full((32, 48), 128, np.uint8)])
    deep = (noise(32, 32).astype(np.uint16) * 257).astype(np.uint16)
    return {
        "png_1x1": encode(".png", noise(1, 1)),
        "png_gray": encode(".png", noise(40, 30, channels=1)),
        "png_rgba": encode(".png", rgba),
        "png_16bit": encode(".png", deep),
        "jpeg_cmyk": pillow_bytes(Image.new("CMYK", (40, 30), (10, 200, 30, 5)), "JPEG", quality=90),
        "jpeg_exif_orientation_6": exif_rotated_jpeg(),
        "webp": encode(".webp", noise(30, 40), [cv2.IMWRITE_WEBP_QUALITY, 90]),
        "webp_lossless": pillow_bytes(Image.fromarray(noise(30, 40)), "WEBP", lossless=True),
        "webp_alpha": pillow_bytes(Image.fromarray(rgba), "WEBP", quality=90),
        "bmp": encode(".bmp", noise(30, 40)),
        "jpeg_1280x720": jpeg_bytes(720, 1280),
    }


# --- bad events ---------------------------------------------------------------------------------------------


def _envelope(name: str, **fields: Any) -> bytes:
    return json.dumps({"event_id": f"bad-{name}", **fields}).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _raw(name: str, value: bytes, code: str) -> BadCase:
    return BadCase(name, value, [("event_id", f"bad-{name}".encode())], code)


def _json(name: str, value: bytes, code: str, headers: list[tuple[str, bytes]] | None = None) -> BadCase:
    return BadCase(name, value, headers, code)


def _bomb_side(max_image_pixels: int, limit: int) -> int:
    side = math.isqrt(max_image_pixels) + 1  # side * side > max_image_pixels
    if side > limit:
        raise ValueError(f"max_image_pixels {max_image_pixels} cannot be exceeded within a {limit}-pixel side")
    return side


def _parse_cases() -> list[BadCase]:
    """Values that fail before any image is looked at: emptiness, JSON syntax, JSON shape."""
    return [
        BadCase("empty_value", b"", None, "missing_image"),
        _json("non_utf8_json", b'{"event_id": "\xff\xfe\xfa", "image_url": "x"}', "invalid_json"),
        _json("not_json_after_brace", b"  {this is not json", "invalid_json"),
        _json("jpeg_labelled_json", jpeg_bytes(), "invalid_json", JSON_HEADERS),
        _json("json_array", b"[1, 2, 3]", "invalid_schema"),
        _json("json_array_of_envelope", b'[{"event_id": "e", "image_url": "x"}]', "invalid_schema"),
        _json("json_number_labelled_json", b"42", "invalid_schema", JSON_HEADERS),
        _json("json_string_labelled_json", b'"an image"', "invalid_schema", JSON_HEADERS),
        _json("json_null_labelled_json", b"null", "invalid_schema", JSON_HEADERS),
        # Unterminated and balanced-but-too-deep nesting: the parser must refuse (no RecursionError escapes).
        _json("deep_nesting_unterminated", b"[" * 100_000, "invalid_json"),
        _json("deep_nesting_balanced", b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        _json("deep_nesting_objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "invalid_json"),
    ]


def _schema_cases(small_png: str) -> list[BadCase]:
    """Well-formed JSON objects that break the envelope rules (docs/EVENTS.md)."""
    return [
        _json("missing_event_id", json.dumps({"image_b64": small_png}).encode(), "invalid_schema"),
        _json("event_id_number", json.dumps({"event_id": 123, "image_b64": small_png}).encode(), "invalid_schema"),
        _json("event_id_null", json.dumps({"event_id": None, "image_b64": small_png}).encode(), "invalid_schema"),
        _json("event_id_empty", json.dumps({"event_id": "", "image_b64": small_png}).encode(), "invalid_schema"),
        _json(
            "event_id_257_chars",
            json.dumps({"event_id": "e" * 257, "image_b64": small_png}).encode(),
            "invalid_schema",
        ),
        _json(
            "both_image_b64_and_url",
            _envelope("both", image_b64=small_png, image_url="https://cdn.facesocial.example/a.png"),
            "invalid_schema",
        ),
        _json("neither_image_b64_nor_url", _envelope("neither", post_id="p-1"), "invalid_schema"),
        _json("image_b64_not_string", _envelope("b64num", image_b64=12345), "invalid_schema"),
        _json("metadata_not_object", _envelope("meta", image_b64=small_png, metadata=[1, 2]), "invalid_schema"),
        _json("faces_not_list", _envelope("faces", image_b64=small_png, faces={"x": 1}), "invalid_schema"),
    ]


def _face_cases(small_png: str) -> list[BadCase]:
    """Face boxes: non-integer values are schema errors; a box wholly off the 64×64 image has nothing to crop."""
    box = {"x": 4, "y": 4, "width": 16, "height": 16}
    cases = [
        (name, {**box, key: value})
        for name, key, value in (
            ("face_fractional_x", "x", 1.5),
            ("face_string_y", "y", "10"),
            ("face_bool_x", "x", True),
            ("face_null_width", "width", None),
            ("face_zero_width", "width", 0),
            ("face_negative_height", "height", -5),
        )
    ]
    out = [_json(name, _envelope(name, image_b64=small_png, faces=[face]), "invalid_schema") for name, face in cases]
    # json.dumps cannot write NaN into a valid document, so splice the literal in (Python's json accepts it).
    nan_doc = _envelope("face_nan", image_b64=small_png, faces=[{**box, "x": 0}]).replace(b'"x": 0', b'"x": NaN')
    out.append(_json("face_nan_x", nan_doc, "invalid_schema"))
    missing = {k: v for k, v in box.items() if k != "height"}
    out.append(_json("face_missing_height", _envelope("fmh", image_b64=small_png, faces=[missing]), "invalid_schema"))
    # More boxes than the largest allowed DFP_MAX_FACES (4096) must be refused, whatever the setting.
    out.append(_json("faces_too_many", _envelope("many", image_b64=small_png, faces=[box] * 4097), "invalid_schema"))
    outside = {"x": 10_000, "y": 10_000, "width": 16, "height": 16}
    out.append(
        _json("face_outside_image", _envelope("fout", image_b64=small_png, faces=[outside]), "face_out_of_bounds")
    )
    return out


def _size_cases(max_image_bytes: int) -> list[BadCase]:
    """Oversize payloads. MAX_IMAGE_BYTES limits the image (for image_b64 judged from the base64 length)."""
    over = max_image_bytes + 3  # +3 keeps the decoded size over the cap whatever the padding
    huge = int(max_image_bytes * 1.5) + 1
    return [
        BadCase("empty_image_b64", _envelope("empty_b64", image_b64=""), None, "missing_image"),
        _json("image_b64_over_max_bytes", _envelope("over", image_b64=_b64(b"\0" * over)), "image_too_large"),
        # The huge part is the image: image_too_large, decided from the base64 length without decoding it.
        _json(
            "huge_json_image_b64",
            _envelope("huge_b64", image_b64=_b64(b"\0" * huge)),
            "image_too_large",
        ),
        # The huge part is not an image and the document never ends: a JSON syntax error, not a size error.
        # (A huge but valid `metadata` is deliberately absent: §4 sets no limit on it, so it is not "bad".)
        _json("huge_json_unterminated", b'{"event_id": "huge", "pad": "' + b"x" * huge, "invalid_json"),
        _raw("raw_image_over_max_bytes", b"\xff\xd8\xff\xe0" + bytes(over), "image_too_large"),
    ]


def _image_cases(max_image_pixels: int) -> list[BadCase]:
    """Bytes that are not an image we accept, or that declare too many pixels (tiny files, bomb headers)."""
    rng = np.random.default_rng(SEED)
    # Start with bytes that are neither JSON openers, whitespace nor an image magic.
    random_bytes = b"\x00\x01" + rng.integers(0, 256, 4094, dtype=np.uint8).tobytes()
    side_png = _bomb_side(max_image_pixels, 0x7FFFFFFF)
    side_jpeg = _bomb_side(max_image_pixels, 0xFFFF)
    png_bomb = patch_png_dims(png_bytes(8, 8), side_png, side_png)
    jpeg_bomb = patch_jpeg_dims(jpeg_bytes(8, 8), side_jpeg, side_jpeg)
    bmp_bomb = patch_bmp_dims(encode(".bmp", noise(8, 8)), side_png, side_png)
    return [
        # Base64 garbage is a decode failure (the image cannot be decoded), not a schema error: the field is a string.
        _json("invalid_base64", _envelope("badb64", image_b64="!!!not*base64@@@"), "image_decode_failed"),
        _json("base64_of_random_bytes", _envelope("b64rand", image_b64=_b64(random_bytes)), "image_decode_failed"),
        _raw("truncated_jpeg_header", jpeg_bytes()[:100], "image_decode_failed"),
        _raw("truncated_png_header", png_bytes()[:20], "image_decode_failed"),
        _raw("random_bytes", random_bytes, "image_decode_failed"),
        _raw("gif", gif_bytes(), "image_decode_failed"),
        _raw("png_bomb_header", png_bomb, "image_too_many_pixels"),
        _json("jpeg_bomb_header_b64", _envelope("jbomb", image_b64=_b64(jpeg_bomb)), "image_too_many_pixels"),
        _raw("bmp_bomb_header", bmp_bomb, "image_too_many_pixels"),
    ]


def _url_cases() -> list[BadCase]:
    """image_url with the default (empty) IMAGE_URL_ALLOWLIST: fetching is off."""
    return [
        _json(
            "image_url_allowlist_empty",
            _envelope("url", image_url="https://cdn.facesocial.example/a.jpg?sig=secret"),
            "url_not_allowed",
        ),
        _json(
            "image_url_metadata_address",
            _envelope("meta_url", image_url="http://169.254.169.254/latest/meta-data/"),
            "url_not_allowed",
        ),
    ]


def bad_events(max_image_bytes: int, max_image_pixels: int) -> list[BadCase]:
    """Every event here must be dead-lettered with `expected_code` (and never crash or stall the processor).

    Assumes the default empty IMAGE_URL_ALLOWLIST. Envelopes carry a 64×64 PNG where the image is not the point.
    """
    small_png = _b64(png_bytes())
    cases = [
        *_parse_cases(),
        *_schema_cases(small_png),
        *_face_cases(small_png),
        *_size_cases(max_image_bytes),
        *_image_cases(max_image_pixels),
        *_url_cases(),
    ]
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "corpus case names must be unique"
    return cases
