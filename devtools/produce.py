"""`produce`: load generator — image files, a folder, a glob, or synthetic images, at a rate or flat out."""

from __future__ import annotations

import argparse
import glob
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from devtools.samples import SampleEvent, json_event, sample_events

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def register(sub: Any) -> None:
    p = sub.add_parser("produce", help="send image events (files, a folder, a glob, or synthetic) to a topic")
    p.add_argument("sources", nargs="*", help="image files, folders or globs; none = synthetic images")
    p.add_argument("--bootstrap-servers", default="localhost:9092")
    p.add_argument("--topic", default="images.uploaded")
    p.add_argument("--count", type=int, default=100, help="events to send (files cycle if fewer)")
    p.add_argument("--duration-s", type=float, default=0.0, help="stop after this long instead (0 = off)")
    p.add_argument("--rate", type=float, default=0.0, help="events per second (0 = as fast as possible)")
    p.add_argument("--size", default="640x480", help="synthetic image size(s), comma list of WxH")
    p.add_argument("--raw", action="store_true", help="send raw image bytes with an event_id header, not JSON")
    p.add_argument("--bad-every", type=int, default=0, help="every Nth synthetic event is bad (DLQ-bound)")
    p.add_argument("--faces-every", type=int, default=3, help="every Nth synthetic event carries a face box")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefix", default="e", help="event_id prefix")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=run_produce)


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """`"640x480,1280x720"` → ((640, 480), (1280, 720)); blank parts are skipped (the bench and `produce`)."""
    pairs = [part.strip().lower().partition("x") for part in text.split(",") if part.strip()]
    return tuple((int(w), int(h)) for w, _, h in pairs)


def file_events(sources: Iterable[str], count: int, raw: bool, prefix: str) -> Iterator[SampleEvent]:
    paths = sorted(_expand(sources))
    if not paths:
        raise SystemExit("produce: no image files found in " + ", ".join(sources))
    blobs = [(p.name, p.read_bytes()) for p in paths]
    for i in range(count):
        name, data = blobs[i % len(blobs)]
        event_id = f"{prefix}-{i}"
        if raw:
            yield SampleEvent(name.encode(), data, [("event_id", event_id.encode())], "raw")
        else:
            yield SampleEvent(name.encode(), json_event(event_id, data), [], "json")


def _expand(sources: Iterable[str]) -> Iterator[Path]:
    for source in sources:
        path = Path(source)
        if path.is_dir():
            yield from (p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            yield path
        else:
            yield from (Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())


def send(
    producer: Producer,
    topic: str,
    events: Iterable[SampleEvent],
    *,
    rate: float = 0.0,
    duration_s: float = 0.0,
    total: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Produce events (paced when rate > 0); flush; return a summary."""
    bar = _progress(total, progress)
    started = time.monotonic()
    sent = 0
    for event in events:
        if duration_s and time.monotonic() - started >= duration_s:
            break
        if rate > 0:
            delay = started + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        _produce(producer, topic, event)
        sent += 1
        if bar is not None:
            bar.update(1)
    producer.flush(60)
    elapsed = time.monotonic() - started
    if bar is not None:
        bar.close()
    return {"sent": sent, "seconds": round(elapsed, 3), "events_per_s": round(sent / elapsed, 1) if elapsed else 0.0}


def _produce(producer: Producer, topic: str, event: SampleEvent) -> None:
    while True:
        try:
            producer.produce(topic, value=event.value, key=event.key, headers=event.headers or None)  # type: ignore[arg-type]
            producer.poll(0)
            return
        except BufferError:
            producer.poll(0.05)


def _progress(total: int | None, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with the [demo] extra; without it, no bar
        return None
    return tqdm(total=total, unit="ev", desc="produce", smoothing=0.1)


def make_producer(bootstrap: str, on_delivery: Callable[[Any, Any], None] | None = None) -> Producer:
    """An idempotent producer for sample events; `on_delivery(err, msg)` sees every delivery report."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.max.bytes": 64 * 1024 * 1024,
        "enable.idempotence": True,
    }
    if on_delivery is not None:
        config["on_delivery"] = on_delivery
    return Producer(config)


def run_produce(args: argparse.Namespace) -> int:
    if args.sources:
        events: Iterable[SampleEvent] = file_events(args.sources, args.count, args.raw, args.prefix)
    else:
        events = sample_events(
            args.count,
            seed=args.seed,
            sizes=parse_sizes(args.size),
            bad_every=args.bad_every,
            faces_every=args.faces_every,
            prefix=args.prefix,
        )
    summary = send(
        make_producer(args.bootstrap_servers),
        args.topic,
        events,
        rate=args.rate,
        duration_s=args.duration_s,
        total=args.count,
        progress=not args.no_progress,
    )
    print(
        f"produced {summary['sent']} events to {args.topic} in {summary['seconds']} s "
        f"({summary['events_per_s']} events/s)"
    )
    return 0


def send_trace(
    producer: Producer, topic: str, events: Iterable[SampleEvent], offsets_s: Sequence[float]
) -> dict[str, float]:
    """Produce event i at `offsets_s[i]` seconds after the start (an arrival trace); flush; return a summary.

    `late_p99_ms` is how far behind its planned time the sender got (the load generator's own lag: on a
    busy machine a trace is only as faithful as this says).
    """
    started = time.monotonic()
    late_ms: list[float] = []
    sent = 0
    for event, at in zip(events, offsets_s, strict=False):
        delay = started + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        late_ms.append(max(0.0, -delay) * 1000.0)
        _produce(producer, topic, event)
        sent += 1
    producer.flush(60)
    late_ms.sort()
    p99 = late_ms[min(len(late_ms) - 1, int(0.99 * len(late_ms)))] if late_ms else 0.0
    return {"sent": sent, "seconds": round(time.monotonic() - started, 3), "late_p99_ms": round(p99, 2)}
