"""Hostile and odd inputs through ONE real processor: each bad event becomes exactly one dead letter with its code and
its original bytes, every good image is scored, and the processor stays healthy (and its memory flat under bombs).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import defaultdict

import pytest
from confluent_kafka import Message

from tests.brokers import Cluster, TopicFactory
from tests.corpus import PNG_SIGNATURE, BadCase, bad_events, exif_rotated_jpeg, good_images, png_bytes
from tests.integration.conftest import ProcessorFactory
from tests.procs import (
    Sampler,
    event_id_of,
    headers_of,
    image_event,
    processor_env,
    produce_values,
    read_topics,
    read_until_ids,
    rss_mb,
)

pytestmark = pytest.mark.slow

MAX_IMAGE_BYTES = 1024 * 1024  # the corpus's 1280x720 JPEG (~400 KB) fits; its oversize cases do not
MAX_IMAGE_PIXELS = 4_000_000
BOX = {"x": 4, "y": 4, "width": 16, "height": 16}


def png_bomb(side: int) -> bytes:
    """A valid side×side black RGB PNG: ~100 KB on the wire, side²·3 bytes (108 MB at 6000) once decoded."""
    row = bytes(1 + side * 3)  # filter byte 0 + a black scanline
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def extra_cases() -> tuple[list[BadCase], dict[str, tuple[bytes, int]]]:
    """Cases beyond the corpus: MAX_FACES (default 64) and EXIF orientation deciding what a face box refers to.

    The EXIF image is stored 64 wide × 48 high and displayed (orientation 6) 48 wide × 64 high: face boxes refer
    to the displayed image, as OpenCV applies the orientation when it decodes.
    """
    small = png_bytes()
    rotated = exif_rotated_jpeg(height=48, width=64, orientation=6)
    bad = [
        BadCase("faces_65_over_max_faces", image_event("faces65", small, faces=[BOX] * 65), None, "invalid_schema"),
        BadCase(
            "exif_box_inside_stored_but_outside_displayed",
            image_event("exif-out", rotated, faces=[{"x": 50, "y": 0, "width": 10, "height": 10}]),
            None,
            "face_out_of_bounds",
        ),
    ]
    good = {  # event id -> (value, expected number of face scores)
        "faces64": (image_event("faces64", small, faces=[BOX] * 64), 64),
        "exif-in": (image_event("exif-in", rotated, faces=[{"x": 0, "y": 50, "width": 40, "height": 10}]), 1),
    }
    return bad, good


def test_every_bad_event_is_one_dead_letter_with_its_code_and_bytes_good_images_scored_processor_unharmed(
    tansu: Cluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory
) -> None:
    bootstrap = tansu.bootstrap
    inp, out, dlq = (topic_factory(bootstrap, 1, prefix) for prefix in ("in", "out", "dlq"))
    extra_bad, extra_good = extra_cases()
    cases = bad_events(MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS) + extra_bad
    goods = good_images()
    values = [c.value for c in cases] + list(goods.values()) + [v for v, _ in extra_good.values()]
    headers: list[list[tuple[str, bytes]] | None] = [c.headers for c in cases]
    headers += [[("event_id", f"good-{name}".encode())] for name in goods]
    headers += [None] * len(extra_good)
    ends = produce_values(bootstrap, inp, values, headers=headers)
    assert ends == {0: len(values)}  # one fresh partition: offset i is values[i]
    env = processor_env(bootstrap, inp, out, dlq, group_id, MAX_IMAGE_BYTES=str(MAX_IMAGE_BYTES),
                        MAX_IMAGE_PIXELS=str(MAX_IMAGE_PIXELS))  # fmt: skip
    proc = processor_factory(env, name="safety")
    messages = read_topics(bootstrap, [out, dlq], 1, len(values), timeout_s=60, settle_s=1.0)

    dead: dict[int, list[Message]] = defaultdict(list)
    results: dict[str, list[Message]] = defaultdict(list)
    for msg in messages:
        if msg.topic() == dlq:
            dead[int(headers_of(msg)["source.offset"])].append(msg)
        else:
            results[event_id_of(msg)].append(msg)
    wrong = []
    for offset, case in enumerate(cases):
        letters = dead.get(offset, [])
        got = [headers_of(m).get("error.code") for m in letters]
        if got != [case.expected_code]:
            wrong.append(f"{case.name}: expected one {case.expected_code}, got {got}")
        elif letters[0].value() != case.value or letters[0].key() != f"k{offset}".encode():
            wrong.append(f"{case.name}: dead letter's key or value differs from the input")
    print(f"\nFIGURE input-safety: {len(cases)} bad cases, {len(goods) + len(extra_good)} good, "
          f"{len(messages)} outputs, {len(wrong)} wrong")  # fmt: skip
    assert not wrong, "\n".join(wrong)
    assert len(dead) == len(cases) and sum(len(v) for v in dead.values()) == len(cases)
    for name in goods:
        assert len(results[f"good-{name}"]) == 1, f"good image {name} was not scored exactly once"
    for event_id, (_, faces) in extra_good.items():
        (result,) = results[event_id]
        assert len(json.loads(result.value() or b"")["faces"]) == faces, event_id
    assert proc.proc is not None and proc.proc.poll() is None
    assert proc.get("/healthz")[0] == 200 and proc.get("/readyz")[0] == 200

    # Decompression bombs: valid PNGs that would decode to 108 MB each are refused from their header.
    bomb, copies = png_bomb(6000), 20
    bomb_ids = {f"bomb-{i}" for i in range(copies)}
    before = rss_mb(proc.pid)
    with Sampler(lambda: rss_mb(proc.pid)) as rss:
        produce_values(bootstrap, inp, [bomb] * copies, headers=[[("event_id", e.encode())] for e in sorted(bomb_ids)])
        letters = [m for m in read_until_ids(bootstrap, [dlq], 1, bomb_ids, timeout_s=60) if event_id_of(m) in bomb_ids]
    after, peak = rss_mb(proc.pid), max(rss.values)
    print(f"FIGURE bomb: {copies} x {len(bomb) // 1024} KiB PNG declaring 6000x6000 "
          f"(decoded {6000 * 6000 * 3 / 2**20:.0f} MiB each): rss before={before:.0f}MiB peak={peak:.0f}MiB "
          f"after={after:.0f}MiB")  # fmt: skip
    assert sorted(event_id_of(m) for m in letters) == sorted(bomb_ids)
    assert {headers_of(m)["error.code"] for m in letters} == {"image_too_many_pixels"}
    assert peak - before < 50, f"RSS rose {peak - before:.0f} MiB while refusing bombs"
    assert proc.stop() == 0
