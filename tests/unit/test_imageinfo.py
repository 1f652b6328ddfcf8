"""probe_image reads format, stored size and EXIF orientation from headers only, and fails safely on anything else."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
from PIL import Image

from processor.errors import ImageDecodeFailed
from processor.imageinfo import ImageInfo, probe_image
from tests.corpus import (
    encode,
    exif_rotated_jpeg,
    gif_bytes,
    good_images,
    jpeg_bytes,
    noise,
    patch_bmp_dims,
    patch_jpeg_dims,
    patch_png_dims,
    pillow_bytes,
    png_bytes,
)

GOOD = good_images()
SOI = b"\xff\xd8"


def _cv2_size(data: bytes) -> tuple[int, int]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    assert image is not None
    return image.shape[1], image.shape[0]


def _extra_images() -> dict[str, bytes]:
    image = noise(37, 53)
    rgb = Image.fromarray(image[:, :, ::-1].copy())
    bmp = encode(".bmp", image)
    return {
        "jpeg_progressive": encode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        "jpeg_grayscale": encode(".jpg", noise(37, 53, channels=1)),
        "jpeg_pillow_optimized": pillow_bytes(rgb, "JPEG", quality=80, optimize=True),
        "png_paletted": pillow_bytes(rgb.convert("P"), "PNG"),
        "bmp_top_down": patch_bmp_dims(bmp, 53, -37),
        "bmp_pillow": pillow_bytes(rgb, "BMP"),
        "webp_pillow_lossy": pillow_bytes(rgb, "WEBP", quality=70),
    }


ALL_IMAGES = {**GOOD, **_extra_images()}


@pytest.mark.parametrize("name", sorted(ALL_IMAGES))
def test_probe_matches_the_size_opencv_decodes(name: str) -> None:
    data = ALL_IMAGES[name]
    info = probe_image(data)
    assert (info.width, info.height) == _cv2_size(data)
    assert info.pixels == info.width * info.height
    assert info.format == name.split("_")[0]


def test_probe_accepts_memoryview_and_numpy_buffers() -> None:
    data = GOOD["jpeg_1280x720"]
    expected = ImageInfo("jpeg", 1280, 720, 1)
    assert probe_image(memoryview(data)) == expected
    assert probe_image(np.frombuffer(data, np.int8).data) == expected  # signed-byte buffer
    assert probe_image(bytearray(data)) == expected


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_read_from_little_endian_exif(orientation: int) -> None:
    info = probe_image(exif_rotated_jpeg(48, 64, orientation))
    assert (info.width, info.height, info.orientation) == (64, 48, orientation)


def _app1_exif(order: str, orientation: int, kind: int = 3) -> bytes:
    magic = b"II*\x00" if order == "<" else b"MM\x00*"
    entry = struct.pack(order + "HHIHH", 0x0112, kind, 1, orientation, 0)
    tiff = magic + struct.pack(order + "IH", 8, 1) + entry + struct.pack(order + "I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


@pytest.mark.parametrize("order", ["<", ">"])
def test_exif_orientation_is_read_in_both_byte_orders(order: str) -> None:
    jpeg = jpeg_bytes(20, 30)
    info = probe_image(SOI + _app1_exif(order, 6) + jpeg[2:])
    assert (info.width, info.height, info.orientation) == (30, 20, 6)


@pytest.mark.parametrize(("orientation", "kind"), [(9, 3), (0, 3), (6, 4)])
def test_invalid_exif_orientation_means_upright(orientation: int, kind: int) -> None:
    assert probe_image(SOI + _app1_exif("<", orientation, kind) + jpeg_bytes()[2:]).orientation == 1


def test_malformed_exif_is_ignored_like_decoders_do() -> None:
    payload = b"Exif\x00\x00MM\x00*\xff\xff\xff\xff"  # IFD offset far past the segment
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    assert probe_image(SOI + app1 + jpeg_bytes()[2:]).orientation == 1


def test_jpeg_fill_bytes_and_stray_data_before_markers_are_skipped() -> None:
    jpeg = jpeg_bytes(21, 33)
    assert jpeg[2:4] == b"\xff\xe0" and jpeg[20:22] == b"\xff\xdb"  # APP0 is bytes 2..19
    padded = SOI + b"\xff" * 50 + jpeg[2:20] + b"\x00\x00junk" + b"\xff" * 7 + jpeg[20:]
    info = probe_image(padded)
    assert (info.width, info.height) == (33, 21) == _cv2_size(padded)


@pytest.mark.parametrize(
    ("name", "data", "size"),
    [
        ("png", patch_png_dims(png_bytes(8, 8), 100_000, 100_000), (100_000, 100_000)),
        ("png_max", patch_png_dims(png_bytes(8, 8), 0x7FFFFFFF, 0x7FFFFFFF), (0x7FFFFFFF, 0x7FFFFFFF)),
        ("jpeg", patch_jpeg_dims(jpeg_bytes(8, 8), 65_535, 65_535), (65_535, 65_535)),
        ("bmp", patch_bmp_dims(encode(".bmp", noise(8, 8)), 200_000, -150_000), (200_000, 150_000)),
    ],
)
def test_bomb_headers_declare_their_size_without_decoding(name: str, data: bytes, size: tuple[int, int]) -> None:
    info = probe_image(data)
    assert (info.width, info.height) == size
    assert info.pixels > 50_000_000
    assert len(data) < 4096


def test_webp_bomb_headers_are_read_from_vp8x_and_vp8l() -> None:
    vp8x = bytearray(GOOD["webp_alpha"])
    assert vp8x[12:16] == b"VP8X"
    vp8x[24:30] = (0xFFFFFF).to_bytes(3, "little") + (99_999).to_bytes(3, "little")
    assert (probe_image(bytes(vp8x)).width, probe_image(bytes(vp8x)).height) == (1 << 24, 100_000)
    vp8l = bytearray(GOOD["webp_lossless"])
    assert vp8l[12:16] == b"VP8L"
    bits = int.from_bytes(vp8l[21:25], "little") | 0x0FFFFFFF  # both 14-bit fields at their maximum
    vp8l[21:25] = bits.to_bytes(4, "little")
    assert (probe_image(bytes(vp8l)).width, probe_image(bytes(vp8l)).height) == (16_384, 16_384)


@pytest.mark.parametrize(
    "data",
    [
        patch_png_dims(png_bytes(8, 8), 0, 8),
        patch_jpeg_dims(jpeg_bytes(8, 8), 8, 0),
        patch_bmp_dims(encode(".bmp", noise(8, 8)), -8, 8),
        patch_bmp_dims(encode(".bmp", noise(8, 8)), 8, 0),
    ],
    ids=["png_zero_width", "jpeg_zero_height", "bmp_negative_width", "bmp_zero_height"],
)
def test_zero_or_negative_dimensions_fail(data: bytes) -> None:
    with pytest.raises(ImageDecodeFailed, match="not positive"):
        probe_image(data)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_every_truncation_either_probes_the_same_or_fails_cleanly(name: str) -> None:
    data = GOOD[name]
    full = probe_image(data)
    for cut in range(min(len(data), 1024)):
        try:
            assert probe_image(data[:cut]) == full
        except ImageDecodeFailed as exc:
            assert exc.code == "image_decode_failed"
    with pytest.raises(ImageDecodeFailed):
        probe_image(data[:10])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"GIF89a",
        b"II*\x00\x08\x00\x00\x00",  # TIFF
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    ],
)
def test_unsupported_formats_are_refused_by_magic(data: bytes) -> None:
    with pytest.raises(ImageDecodeFailed, match="unsupported image format"):
        probe_image(data)


def test_gif_and_tiff_are_refused_even_though_opencv_reads_them() -> None:
    tiff = pillow_bytes(Image.fromarray(noise(8, 8)), "TIFF")
    for data in (gif_bytes(), tiff):
        with pytest.raises(ImageDecodeFailed, match="unsupported image format"):
            probe_image(data)


@pytest.mark.parametrize("magic", [b"", SOI + b"\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBP", b"BM"])
def test_random_bytes_behind_any_magic_never_escape_as_other_errors(magic: bytes) -> None:
    rng = np.random.default_rng(7)
    for _ in range(300):
        tail = rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        try:
            info = probe_image(magic + tail)
        except ImageDecodeFailed:
            continue
        assert info.width > 0 and info.height > 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "data",
    [
        SOI + b"\xff" * 5_000_000,  # endless fill bytes, no marker
        SOI + b"\xff\x01" * 1_000_000,  # endless standalone markers
        SOI + b"\xff\xd0" * 1_000_000,  # endless RSTn
        SOI + b"\xff\xe0\x00\x02" * 1_000_000,  # endless empty APP0 segments
        SOI + b"\xff\xe0\x00\x02" + b"\x00" * 5_000_000,  # garbage, no further marker
        SOI + b"\xff\xe0\x00\x00" + b"\x00" * 100,  # zero-length segment (would not advance)
        SOI + b"\xff\xe0\x00\x01" + b"\x00" * 100,  # length shorter than its own field
        SOI + b"\xff\xda\x00\x08" + b"\x00" * 100,  # scan before any frame header
        SOI + b"\xff\xd9",  # end of image before any frame header
    ],
    ids=["fill", "tem", "rst", "empty_app0", "garbage", "zero_length", "short_length", "sos_first", "eoi_first"],
)
def test_crafted_jpeg_marker_loops_terminate_with_decode_failed(data: bytes) -> None:
    with pytest.raises(ImageDecodeFailed, match="truncated/corrupt jpeg header"):
        probe_image(data)
