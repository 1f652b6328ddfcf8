"""Where one decode costs, and how one process's decode pool scales with threads: `python -m bench.decode_scaling`.

Prints the single-thread cost of each part of `Decoder.decode` on the bench's JPEG mix (640x480 and 1280x720,
bundled model's 224x224 preprocessing): the envelope (JSON + base64, holds the GIL), the header probe, the
pixel decode (cv2, releases the GIL) and the crops (resize + normalise); then events/s of the whole decode on
1, 2, 4, 8 and 16 threads of one process. Where the thread rows stop growing, one Python process is the limit,
not the cores: the GPU host of docs/GPU.md is the case in point.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cv2

from bench.inproc import limits_of
from bench.workload import iter_events, to_inflight
from devtools.produce import parse_sizes
from models.loader import resolve_model
from processor.decode import Decoder, Preprocessor
from processor.envelope import open_envelope
from processor.imageinfo import probe_image
from processor.settings import load_settings


def _per_call_ms(fn: Callable[[int], object], n: int) -> float:
    started = time.thread_time()
    for i in range(n):
        fn(i)
    return 1000.0 * (time.thread_time() - started) / n


def main() -> None:
    """Print the per-part CPU ms and the threads → events/s rows."""
    cv2.setNumThreads(1)  # as processor.app.run
    events = list(iter_events(16, parse_sizes("640x480,1280x720"), ["jpeg"]))
    limits = limits_of(load_settings({}))  # the processor's defaults
    decoder = Decoder(Preprocessor(resolve_model(None).preprocess), limits, None)
    data = [open_envelope(to_inflight(e, 0), limits.max_image_bytes, limits.max_faces)[0] or b"" for e in events]
    info = [probe_image(d) for d in data]
    pixels = [decoder._decode_pixels(d, i, None) for d, i in zip(data, info, strict=True)]
    k = len(events)
    parts = {
        "envelope": lambda i: open_envelope(to_inflight(events[i % k], i), limits.max_image_bytes, limits.max_faces),
        "probe": lambda i: probe_image(data[i % k]),
        "pixels": lambda i: decoder._decode_pixels(data[i % k], info[i % k], None),
        "crops": lambda i: decoder._crops(pixels[i % k][0], pixels[i % k][1], None),
        "whole decode": lambda i: decoder.decode(to_inflight(events[i % k], i)),
    }
    for name, fn in parts.items():
        print(f"{name:<13} {_per_call_ms(fn, 400):.3f} CPU ms per event (one thread)")
    for threads in (1, 2, 4, 8, 16):
        with ThreadPoolExecutor(threads) as pool:
            started = time.perf_counter()
            list(pool.map(lambda i: decoder.decode(to_inflight(events[i % k], i)), range(1600)))
            print(f"{threads:>2} threads: {1600 / (time.perf_counter() - started):.0f} events/s")


if __name__ == "__main__":
    main()
