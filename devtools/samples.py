"""Synthetic image events for demo, produce and bench: seeded images (JPEG/PNG/WebP), face boxes, bad events."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

FORMATS = {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}
POOL_SIZE = 16


@dataclass(frozen=True, slots=True)
class SampleEvent:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    kind: str  # "json", "raw", or "bad:<expected code>"


def synthetic_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth BGR picture with a few shapes: compresses like a photo, unlike pure noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [x / max(1, width) * 255, y / max(1, height) * 255, np.full_like(x, float(rng.integers(0, 255)))], axis=-1
    )
    image = base.astype(np.uint8)
    for _ in range(4):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        radius = int(rng.integers(max(2, min(width, height) // 16), max(3, min(width, height) // 4)))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.circle(image, center, radius, color, thickness=-1)
    noise = rng.integers(0, 12, image.shape, dtype=np.uint8)
    return cv2.add(image, noise)


def encode(image: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    # WebP at its default effort costs ~200 ms per 640x480 frame; the lowest effort is plenty for samples.
    params = {
        "jpeg": [cv2.IMWRITE_JPEG_QUALITY, quality],
        "webp": [cv2.IMWRITE_WEBP_QUALITY, 80],
        "png": [cv2.IMWRITE_PNG_COMPRESSION, 1],
    }[fmt]
    ok, buf = cv2.imencode(FORMATS[fmt], image, params)
    if not ok:
        raise ValueError(f"cannot encode {fmt}")
    return buf.tobytes()


def json_event(
    event_id: str, image: bytes, faces: list[dict[str, int]] | None = None, post_id: str | None = None
) -> bytes:
    doc: dict[str, object] = {
        "event_id": event_id,
        "post_id": post_id or f"p-{event_id}",
        "user_id": "u-demo",
        "image_b64": base64.b64encode(image).decode(),
    }
    if faces:
        doc["faces"] = faces
    return json.dumps(doc).encode()


def sample_events(
    count: int,
    *,
    seed: int = 0,
    sizes: tuple[tuple[int, int], ...] = ((640, 480),),
    bad_every: int = 0,
    faces_every: int = 3,
    prefix: str = "e",
) -> Iterator[SampleEvent]:
    """A deterministic mix: JSON JPEG/PNG/WebP events, raw-bytes events, some with faces, every Nth bad."""
    rng = np.random.default_rng(seed)
    formats = ("jpeg", "jpeg", "png", "webp")
    pool: dict[tuple[int, int, str, int], bytes] = {}
    for i in range(count):
        event_id = f"{prefix}-{i}"
        key = f"post-{i % 97}".encode()
        if bad_every and i % bad_every == bad_every - 1:
            yield _bad_event(i, event_id, key)
            continue
        width, height = sizes[i % len(sizes)]
        # A pool of distinct pictures per size/format keeps big runs (bench) cheap to generate.
        slot = (width, height, formats[i % len(formats)], i % POOL_SIZE)
        if slot not in pool:
            pool[slot] = encode(synthetic_image(rng, width, height), slot[2])
        data = pool[slot]
        if i % 5 == 4:
            yield SampleEvent(key, data, [("event_id", event_id.encode())], "raw")
            continue
        faces = None
        if faces_every and i % faces_every == 0:
            faces = [{"x": width // 4, "y": height // 4, "width": width // 3, "height": height // 2}]
        yield SampleEvent(key, json_event(event_id, data, faces), [], "json")


def _bad_event(i: int, event_id: str, key: bytes) -> SampleEvent:
    bad = [
        (b'{"event_id": "' + event_id.encode() + b'", "image_b64": "bm90IGFuIGltYWdl"}', "image_decode_failed"),
        (b'{"event_id": 42, "image_b64": "AAAA"}', "invalid_schema"),
        (b"{not json", "invalid_json"),
        (b'{"event_id": "' + event_id.encode() + b'", "image_url": "https://cdn.example/x.jpg"}', "url_not_allowed"),
    ]
    value, code = bad[i % len(bad)]
    return SampleEvent(key, value, [], f"bad:{code}")
