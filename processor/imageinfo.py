"""Read an image's format, stored dimensions and EXIF orientation from its header, without decoding pixels.

This is the decompression-bomb guard: the caller compares `ImageInfo.pixels` with MAX_IMAGE_PIXELS before
OpenCV allocates anything. Only JPEG, PNG, WebP and BMP are accepted; anything else (GIF, TIFF, AVIF, random
bytes) raises `ImageDecodeFailed` here, even where OpenCV itself could decode it. Work is bounded: every step
advances through the buffer and the number of JPEG segments walked is capped.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from processor.errors import ImageDecodeFailed

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# SOF0-3, SOF5-7, SOF9-11, SOF13-15: every frame header that carries the dimensions (C4/C8/CC are not frames).
_JPEG_SOF_MARKERS = frozenset((*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)))
# Markers that stand alone, without a length field: TEM, RST0-7, SOI.
_JPEG_STANDALONE_MARKERS = frozenset((0x01, *range(0xD0, 0xD9)))
_JPEG_SOS, _JPEG_EOI, _JPEG_APP1 = 0xDA, 0xD9, 0xE1
# Real files have a few dozen segments before the frame header; a crafted one must not make us walk millions.
_MAX_JPEG_SEGMENTS = 4096
_EXIF_ORIENTATION_TAG = 0x0112
_EXIF_SHORT = 3
# re scans any buffer (bytes, memoryview) in C: skipping garbage or a run of 0xFF fill costs no Python loop.
_FF = re.compile(rb"\xff")
_NOT_FF = re.compile(rb"[^\xff]")


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What an image header declares. Width and height are as stored (before EXIF rotation)."""

    format: str
    width: int
    height: int
    orientation: int = 1

    @property
    def pixels(self) -> int:
        """Pixel count the decoder would allocate for (orientation does not change it)."""
        return self.width * self.height


def probe_image(data: bytes | bytearray | memoryview) -> ImageInfo:
    """Return the format and dimensions declared by the header of a JPEG, PNG, WebP or BMP image.

    Raises:
        ImageDecodeFailed: the format is not one of the four, or its header is truncated, corrupt or
            declares a zero or negative dimension.
    """
    view = _byte_view(data)
    if view[:3] == b"\xff\xd8\xff":
        return _probe_jpeg(view)
    if view[:8] == PNG_SIGNATURE:
        return _probe_png(view)
    if view[:4] == b"RIFF" and view[8:12] == b"WEBP":
        return _probe_webp(view)
    if view[:2] == b"BM":
        return _probe_bmp(view)
    raise ImageDecodeFailed(
        f"unsupported image format (magic {bytes(view[:8]).hex() or 'none'}); "
        "accepted formats are JPEG, PNG, WebP and BMP"
    )


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    # Compare and index as unsigned bytes whatever the exporter's format (int8 arrays, 2-D buffers).
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


def _corrupt(fmt: str, why: str) -> ImageDecodeFailed:
    return ImageDecodeFailed(f"truncated/corrupt {fmt} header: {why}")


def _checked(fmt: str, width: int, height: int, orientation: int = 1) -> ImageInfo:
    if width <= 0 or height <= 0:
        raise _corrupt(fmt, f"dimensions {width}x{height} are not positive")
    return ImageInfo(format=fmt, width=width, height=height, orientation=orientation)


def _unpack(fmt: str, layout: str, view: memoryview, offset: int) -> tuple[int, ...]:
    if offset < 0 or offset + struct.calcsize(layout) > len(view):
        raise _corrupt(fmt, f"ends at byte {len(view)}, before the dimensions")
    return struct.unpack_from(layout, view, offset)


# --- JPEG -----------------------------------------------------------------------------------------------


def _next_marker(view: memoryview, pos: int) -> tuple[int, int]:
    """Return (marker, position after it), skipping stray bytes and 0xFF fill as libjpeg does."""
    found = _FF.search(view, pos)
    if found is None:
        raise _corrupt("jpeg", "no frame header (SOFn) before the end of the data")
    code = _NOT_FF.search(view, found.start())
    if code is None:
        raise _corrupt("jpeg", "no frame header (SOFn) before the end of the data")
    return view[code.start()], code.start() + 1


def _probe_jpeg(view: memoryview) -> ImageInfo:
    pos, orientation = 2, 1
    for _ in range(_MAX_JPEG_SEGMENTS):
        marker, pos = _next_marker(view, pos)
        if marker == 0x00 or marker in _JPEG_STANDALONE_MARKERS:
            continue  # a stuffed zero is stray data; standalone markers carry nothing
        if marker in (_JPEG_SOS, _JPEG_EOI):
            raise _corrupt("jpeg", f"marker 0x{marker:02X} before any frame header (SOFn)")
        (length,) = _unpack("jpeg", ">H", view, pos)
        if length < 2 or pos + length > len(view):
            raise _corrupt("jpeg", f"segment 0x{marker:02X} at byte {pos - 2} runs past the data")
        if marker in _JPEG_SOF_MARKERS:
            height, width = _unpack("jpeg", ">xxxHH", view, pos)
            return _checked("jpeg", width, height, orientation)
        if marker == _JPEG_APP1 and orientation == 1:
            orientation = _exif_orientation(view[pos + 2 : pos + length])
        pos += length
    raise _corrupt("jpeg", f"more than {_MAX_JPEG_SEGMENTS} segments before the frame header")


def _exif_orientation(segment: memoryview) -> int:
    """Orientation (1..8) from an APP1 Exif segment's IFD0; 1 when absent or malformed (as decoders do)."""
    if segment[:6] != b"Exif\x00\x00":
        return 1
    tiff = segment[6:]
    order = {b"II": "<", b"MM": ">"}.get(bytes(tiff[:2]))
    if order is None or len(tiff) < 8:
        return 1
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    # The entry count is bounded by the segment (<64 KiB), so this loop is too.
    for index in range(min(count, (len(tiff) - ifd - 2) // 12)):
        tag, kind, _, value = struct.unpack_from(order + "HHIH", tiff, ifd + 2 + 12 * index)
        if tag == _EXIF_ORIENTATION_TAG:
            return value if kind == _EXIF_SHORT and 1 <= value <= 8 else 1
    return 1


# --- PNG, WebP, BMP ---------------------------------------------------------------------------------------


def _probe_png(view: memoryview) -> ImageInfo:
    length, chunk, width, height = _unpack("png", ">I4sII", view, 8)
    if chunk != b"IHDR" or length != 13:
        raise _corrupt("png", f"first chunk is {chunk!r} of {length} bytes, not a 13-byte IHDR")
    if width > 0x7FFFFFFF or height > 0x7FFFFFFF:
        raise _corrupt("png", f"dimensions {width}x{height} exceed the PNG limit of 2^31-1")
    return _checked("png", width, height)


def _probe_webp(view: memoryview) -> ImageInfo:
    (chunk,) = _unpack("webp", "4s", view, 12)
    if chunk == b"VP8 ":
        # Frame tag (3 bytes), start code 9D 01 2A, then 14-bit width and height (top 2 bits are scaling).
        start, width, height = _unpack("webp", "<3x3sHH", view, 20)
        if start != b"\x9d\x01\x2a":
            raise _corrupt("webp", "VP8 key frame start code missing")
        return _checked("webp", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":
        signature, bits = _unpack("webp", "<BI", view, 20)
        if signature != 0x2F:
            raise _corrupt("webp", "VP8L signature byte missing")
        return _checked("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        # Flags (1 byte), reserved (3), then the canvas width-1 and height-1 as 24-bit little-endian.
        low_w, high_w, low_h, high_h = _unpack("webp", "<4xHBHB", view, 20)
        return _checked("webp", (low_w | high_w << 16) + 1, (low_h | high_h << 16) + 1)
    raise _corrupt("webp", f"unknown first chunk {bytes(chunk)!r}")


def _probe_bmp(view: memoryview) -> ImageInfo:
    (header_size,) = _unpack("bmp", "<I", view, 14)
    if header_size == 12:  # BITMAPCOREHEADER (OS/2): unsigned 16-bit fields
        width, height = _unpack("bmp", "<HH", view, 18)
        return _checked("bmp", width, height)
    if header_size < 40:
        raise _corrupt("bmp", f"unknown DIB header of {header_size} bytes")
    width, height = _unpack("bmp", "<ii", view, 18)
    # A negative height means the rows are stored top-down; the image is |height| rows tall.
    return _checked("bmp", width, abs(height))
