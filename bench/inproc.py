"""In-process bench stages, no Kafka: the decode stage alone, the model alone, and decode + batch + score together.

They use the processor's own classes (DecodePool/Decoder/Preprocessor, MicroBatcher, Scorer, Engine) wired
as `processor.app` wires them, so their rates are ceilings the Kafka pipeline can be held against.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.workload import to_inflight
from devtools.samples import SampleEvent
from models.loader import find_variants, resolve_model
from processor.app import load_engine
from processor.batcher import MicroBatcher
from processor.decode import DecodeLimits, DecodePool, Decoder, Preprocessor
from processor.engine import Engine
from processor.inflight import InFlight
from processor.outcomes import Outcomes
from processor.scorer import Scorer
from processor.settings import Settings
from processor.telemetry.metrics import Metrics

DRAIN_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class StageRun:
    """How many images a stage finished and in how long (first submission to last completion)."""

    images: int
    seconds: float
    extra: dict[str, float] | None = None
    provider: str = ""
    cpu_s: float = 0.0  # CPU time the process spent meanwhile (all threads), whatever else the machine ran

    @property
    def images_per_s(self) -> float:
        """Images per wall-clock second (0 for an empty run)."""
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_per_image(self) -> float:
        """Core-milliseconds per image: unlike images/s, barely moved by other load on a shared machine."""
        return self.cpu_s * 1000.0 / self.images if self.images else 0.0


class _Completion:
    """Counts finished items from worker threads; a bounded semaphore caps how many are outstanding."""

    def __init__(self, slots: int) -> None:
        self.slots = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self.done = 0
        self.last = 0.0
        self._expected: int | None = None
        self.all_done = threading.Event()
        self.failures: list[InFlight] = []

    def failed(self, item: InFlight) -> None:
        """One event the decode stage refused: counted as done, and remembered for `raise_failures`."""
        self.failures.append(item)
        self.put(item)

    def raise_failures(self) -> None:
        """A bench event must never be refused: raise on the first one that was."""
        if self.failures:
            first = self.failures[0]
            raise RuntimeError(f"decode failed for bench event {first.offset}: {first.error}")

    def put(self, item: InFlight) -> None:
        """One event decided (its outcome built)."""
        item.crops = None
        with self._lock:
            self.done += 1
            self.last = time.monotonic()
            if self._expected is not None and self.done >= self._expected:
                self.all_done.set()
        self.slots.release()

    def expect(self, total: int) -> None:
        with self._lock:
            self._expected = total
            if self.done >= total:
                self.all_done.set()


def _drive(submit: Callable[[InFlight], None], events: Sequence[SampleEvent], seconds: float,
           completion: _Completion) -> StageRun:  # fmt: skip
    """Submit events (cycled) for `seconds`, never more outstanding than the semaphore allows; wait for all."""
    started, cpu = time.monotonic(), time.process_time()
    submitted = 0
    while time.monotonic() - started < seconds:
        completion.slots.acquire()
        submit(to_inflight(events[submitted % len(events)], submitted))
        submitted += 1
    completion.expect(submitted)
    if not completion.all_done.wait(DRAIN_TIMEOUT_S):
        raise RuntimeError(f"in-process stage finished only {completion.done} of {submitted} images")
    return StageRun(completion.done, completion.last - started, cpu_s=time.process_time() - cpu)


def limits_of(settings: Settings) -> DecodeLimits:
    """The decode limits (image bytes, pixels, faces) the settings give the processor."""
    return DecodeLimits(int(settings.max_image_bytes), settings.max_image_pixels, settings.max_faces)


def decode_only(settings: Settings, events: Sequence[SampleEvent], seconds: float) -> StageRun:
    """DecodePool on DECODE_WORKERS threads with the served model's preprocessing; outputs are dropped."""
    model = resolve_model(settings.model_dir, settings.model_variant.value)
    decoder = Decoder(Preprocessor(model.preprocess), limits_of(settings), None)
    completion = _Completion(4 * settings.decode_workers)
    pool = DecodePool(decoder, settings.decode_workers, completion.put, completion.failed)
    try:
        run = _drive(pool.submit, events, seconds, completion)
    finally:
        pool.shutdown()
    completion.raise_failures()
    return run


def model_variants(model_dir: Path, wanted: Sequence[str] | None) -> list[str]:
    """The variants to bench: those present in the model directory, kept to `wanted` when given."""
    present = list(find_variants(model_dir)) if model_dir.is_dir() else [resolve_model(model_dir).variant]
    if wanted:
        missing = [v for v in wanted if v not in present]
        if missing:
            raise ValueError(f"variants {missing} are not in {model_dir} (present: {', '.join(present)})")
        return [v for v in present if v in wanted]
    return present


def model_only(settings: Settings, variant: str, batch_sizes: Sequence[int],
               seconds: float) -> tuple[dict[int, tuple[float, float]], str]:  # fmt: skip
    """Per batch size (median wall ms, mean CPU ms) per Engine.infer call on random tensors; and the provider."""
    model = resolve_model(settings.model_dir, variant)
    engine = Engine(model, settings.providers, require_gpu=False, threads=settings.inference_threads)
    shape = Preprocessor(model.preprocess).shape
    rng = np.random.default_rng(0)
    timed = {n: _time_infer(engine, rng.uniform(-1, 1, (n, *shape)).astype(np.float32), seconds) for n in batch_sizes}
    return timed, engine.provider


def _time_infer(engine: Engine, batch: np.ndarray, seconds: float) -> tuple[float, float]:
    """(median wall ms per call, mean CPU ms per call)."""
    engine.infer(batch)  # first call per shape pays allocation and kernel selection
    times: list[float] = []
    started, cpu = time.monotonic(), time.process_time()
    while len(times) < 2 or time.monotonic() - started < seconds:
        t0 = time.perf_counter()
        engine.infer(batch)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times), (time.process_time() - cpu) * 1000.0 / len(times)


def pipeline_ceiling(settings: Settings, events: Sequence[SampleEvent], seconds: float) -> StageRun:
    """DecodePool → MicroBatcher → Scorer → result building, as in processor.app, with no Kafka around it."""
    engine = load_engine(settings)
    pre = Preprocessor(engine.model.preprocess)
    engine.warm_up(pre.shape, tuple(sorted({1, settings.max_batch_size})))
    batcher = MicroBatcher(settings.max_batch_size, settings.max_batch_wait_ms / 1000.0, pre.shape)
    # One batch decoding while another is scored keeps batches full; MAX_IN_FLIGHT (1024) would only add a
    # drain tail of minutes with a slow model (the rate counts every image either way).
    completion = _Completion(min(settings.max_in_flight, 2 * settings.max_batch_size + 2 * settings.decode_workers))

    metrics = Metrics()
    outcomes = Outcomes("out", "dlq", metrics, completion)
    pool = DecodePool(Decoder(pre, limits_of(settings), None), settings.decode_workers, batcher.put, outcomes.decide)
    scorer = Scorer(batcher, lambda: engine, outcomes.decide, metrics)
    scorer.start()
    try:
        run = _drive(pool.submit, events, seconds, completion)
    finally:
        scorer.stop()
        pool.shutdown(wait=False)
    if scorer.fatal is not None:
        raise RuntimeError(f"scorer failed: {scorer.fatal}")
    total = metrics.registry.get_sample_value("deepfake_batch_size_sum") or 0.0
    batches = metrics.registry.get_sample_value("deepfake_batch_size_count") or 0.0
    mean_batch = total / batches if batches else 0.0
    return StageRun(run.images, run.seconds, {"mean_batch_size": mean_batch}, engine.provider, run.cpu_s)


BARE_BATCH = 32


def bare_ceiling(settings: Settings, events: Sequence[SampleEvent], seconds: float) -> StageRun:
    """Decode on DECODE_WORKERS threads and infer what is decoded in batches of up to 32 — nothing else.

    No micro-batcher policy, no scorer bookkeeping, no results or dead letters: the least work an image can
    cost in this process, the ceiling that per-event overhead (envelope, hand-offs, result building, Kafka)
    is measured against (`e2e / bare_ceiling`).
    """
    import queue

    engine = load_engine(settings)
    pre = Preprocessor(engine.model.preprocess)
    engine.warm_up(pre.shape, (1, BARE_BATCH))
    completion = _Completion(min(settings.max_in_flight, 2 * BARE_BATCH + 2 * settings.decode_workers))
    decoded: queue.SimpleQueue[InFlight] = queue.SimpleQueue()
    stop = threading.Event()

    def infer_loop() -> None:
        while not stop.is_set():
            try:
                items = [decoded.get(timeout=0.05)]
            except queue.Empty:
                continue
            while len(items) < BARE_BATCH:
                try:
                    items.append(decoded.get_nowait())
                except queue.Empty:
                    break
            engine.infer(np.concatenate([item.crops for item in items if item.crops is not None]))
            for item in items:
                completion.put(item)

    pool = DecodePool(Decoder(pre, limits_of(settings), None), settings.decode_workers, decoded.put, completion.failed)
    thread = threading.Thread(target=infer_loop, name="bare-inference", daemon=True)
    thread.start()
    try:
        run = _drive(pool.submit, events, seconds, completion)
    finally:
        stop.set()
        thread.join(5)
        pool.shutdown(wait=False)
    completion.raise_failures()
    return StageRun(run.images, run.seconds, provider=engine.provider, cpu_s=run.cpu_s)
