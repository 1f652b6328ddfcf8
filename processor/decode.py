"""Decode stage (worker pool): envelope → image bytes → header checks → cv2 decode → crops → NCHW float32."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from models.preprocess import PreprocessConfig
from processor.decode_order import DecodeOrder
from processor.envelope import open_envelope
from processor.errors import (
    FaceOutOfBounds,
    ImageDecodeFailed,
    ImageTooManyPixels,
    ProcessorError,
    UrlNotAllowed,
)
from processor.fetch import UrlFetcher
from processor.imageinfo import ImageInfo, probe_image
from processor.inflight import InFlight
from schemas import FaceBox

log = logging.getLogger(__name__)

# cv2 decodes JPEG at 1/2, 1/4, 1/8 scale through libjpeg's DCT scaling: far cheaper than full decode + resize.
_REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR_RGB,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
# EXIF orientations 5–8 swap width and height when displayed.
_TRANSPOSED = frozenset({5, 6, 7, 8})


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What the decode stage refuses: bytes, pixels (from the header, before decoding) and face boxes."""

    max_image_bytes: int
    max_image_pixels: int
    max_faces: int


class Preprocessor:
    """Pure image → tensor work, exactly as `preprocessor_config.json` says (RGB, resize, rescale, normalise)."""

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config
        self.shape = (3, config.height, config.width)
        scale, bias = config.scale_and_bias()
        self._scale_chw = scale.astype(np.float32)[:, None, None]
        self._bias_chw = bias.astype(np.float32)[:, None, None]

    def reduction_for(self, width: int, height: int) -> int:
        """Largest JPEG DCT reduction that still leaves at least the model's input size."""
        need_w, need_h = self._needed_size()
        for factor in (8, 4, 2):
            if width // factor >= need_w and height // factor >= need_h:
                return factor
        return 1

    def _needed_size(self) -> tuple[int, int]:
        c = self.config
        if c.resize_shortest_edge:
            return c.resize_shortest_edge, c.resize_shortest_edge
        return c.width, c.height

    def to_tensor(self, rgb: np.ndarray, out: np.ndarray) -> None:
        """Resize (or shortest-edge + centre crop) an RGB uint8 image and write CHW float32 into `out`."""
        resized = self._resize(rgb)
        # Normalise straight from the transposed (CHW) view into the preallocated row: no HWC float
        # temporary and no extra copy (3.5x cheaper than scale-then-transpose, bit-identical).
        np.multiply(resized.transpose(2, 0, 1), self._scale_chw, out=out)
        np.add(out, self._bias_chw, out=out)

    def _resize(self, rgb: np.ndarray) -> np.ndarray:
        c = self.config
        if not c.do_resize:
            if rgb.shape[:2] != (c.height, c.width):
                raise ImageDecodeFailed(
                    f"do_resize is false and the image is {rgb.shape[1]}x{rgb.shape[0]}, "
                    f"the model needs {c.width}x{c.height}"
                )
            return rgb
        if c.resize_shortest_edge:
            return self._shortest_edge(rgb, c.resize_shortest_edge)
        return cv2.resize(rgb, (c.width, c.height), interpolation=c.resample)

    def _shortest_edge(self, rgb: np.ndarray, edge: int) -> np.ndarray:
        c = self.config
        h, w = rgb.shape[:2]
        ratio = edge / min(h, w)
        new_w, new_h = max(c.width, round(w * ratio)), max(c.height, round(h * ratio))
        resized = cv2.resize(rgb, (new_w, new_h), interpolation=c.resample)
        top, left = (new_h - c.height) // 2, (new_w - c.width) // 2
        return resized[top : top + c.height, left : left + c.width]


class Decoder:
    """Checks and decodes one event into `item.crops`; raises a ProcessorError for anything it refuses."""

    def __init__(
        self,
        preprocessor: Preprocessor,
        limits: DecodeLimits,
        fetcher: UrlFetcher | None,
    ) -> None:
        self.pre = preprocessor
        self.limits = limits
        self.fetcher = fetcher

    def decode(self, item: InFlight) -> None:
        """Fill `item.crops` (one NCHW row per face, or the whole image); raise a ProcessorError to refuse."""
        item.decode_started = time.monotonic()
        data, url = open_envelope(item, self.limits.max_image_bytes, self.limits.max_faces)
        if url is not None:
            data = self._fetch(url)
        assert data is not None
        info = probe_image(data)
        if info.pixels > self.limits.max_image_pixels:
            raise ImageTooManyPixels(
                f"{info.format} header declares {info.width}x{info.height} = {info.pixels} pixels, "
                f"MAX_IMAGE_PIXELS is {self.limits.max_image_pixels}"
            )
        rgb, factor = self._decode_pixels(data, info, item.faces)
        item.crops = self._crops(rgb, factor, item.faces)
        item.decoded_at = time.monotonic()

    def _fetch(self, url: str) -> bytes:
        if self.fetcher is None or not self.fetcher.enabled:
            raise UrlNotAllowed("image_url fetching is off (IMAGE_URL_ALLOWLIST is empty)")
        return self.fetcher.fetch(url)

    def _decode_pixels(self, data: bytes, info: ImageInfo, faces: list[FaceBox] | None) -> tuple[np.ndarray, int]:
        factor = self._reduction(info, faces) if info.format == "jpeg" else 1
        buf = np.frombuffer(data, dtype=np.uint8)
        try:
            image = cv2.imdecode(buf, _REDUCED_FLAGS[factor])
        except cv2.error as exc:
            raise ImageDecodeFailed(f"{info.format} decode failed: {str(exc)[:200]}") from None
        if image is None or image.size == 0:
            raise ImageDecodeFailed(f"{info.format} data could not be decoded (corrupt or truncated)")
        if factor != 1:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return image, factor

    def _reduction(self, info: ImageInfo, faces: list[FaceBox] | None) -> int:
        width, height = info.width, info.height
        if info.orientation in _TRANSPOSED:
            width, height = height, width
        if faces:
            # The smallest face decides: its crop must keep at least the model's input resolution.
            width = min(f.width for f in faces)
            height = min(f.height for f in faces)
        return self.pre.reduction_for(width, height)

    def _crops(self, rgb: np.ndarray, factor: int, faces: list[FaceBox] | None) -> np.ndarray:
        boxes = faces or []
        out = np.empty((max(1, len(boxes)), *self.pre.shape), dtype=np.float32)
        if not boxes:
            self.pre.to_tensor(rgb, out[0])
            return out
        h, w = rgb.shape[:2]
        for i, box in enumerate(boxes):
            x0, y0 = max(0, box.x // factor), max(0, box.y // factor)
            x1, y1 = min(w, -(-(box.x + box.width) // factor)), min(h, -(-(box.y + box.height) // factor))
            if x1 <= x0 or y1 <= y0:
                raise FaceOutOfBounds(
                    f"face box {i} ({box.x},{box.y},{box.width}x{box.height}) lies outside the "
                    f"{w * factor}x{h * factor} image"
                )
            self.pre.to_tensor(rgb[y0:y1, x0:x1], out[i])
        return out


class DecodePool:
    """Runs Decoder.decode on named worker threads (cv2 releases the GIL); hands results on by callback."""

    def __init__(
        self,
        decoder: Decoder,
        workers: int,
        on_decoded: Callable[[InFlight], None],
        on_failed: Callable[[InFlight], None],
        order: DecodeOrder | None = None,
    ) -> None:
        self.decoder = decoder
        self._on_decoded = on_decoded
        self._on_failed = on_failed
        self.order = order if order is not None else DecodeOrder()  # an empty order is falsy (it has a length)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")

    def submit(self, item: InFlight) -> None:
        """Queue one event for a decode worker (called on the consumer thread or by /detect)."""
        self.order.push(item)
        # One task per event: a free worker takes whichever event the order puts first, not necessarily this one.
        self._pool.submit(self._run_next)

    def _run_next(self) -> None:
        item = self.order.pop()
        if item is not None:
            self._run(item)

    def _run(self, item: InFlight) -> None:
        try:
            self.decoder.decode(item)
        except ProcessorError as exc:
            item.error = exc
            item.decoded_at = time.monotonic()
            self._on_failed(item)
            return
        except Exception as exc:  # a bug or a cv2 surprise must dead-letter the event, not kill the worker
            log.exception("unexpected decode error", extra={"event_id": item.event_id, "offset": item.offset})
            item.error = ImageDecodeFailed(f"unexpected decode error: {type(exc).__name__}: {str(exc)[:200]}")
            item.decoded_at = time.monotonic()
            self._on_failed(item)
            return
        self._on_decoded(item)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the worker threads (after the queued events when `wait`)."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
