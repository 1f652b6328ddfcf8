"""Scoring stage (one thread): takes micro-batches, runs the engine, isolates poison items, builds the outputs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from processor.batcher import Batch, MicroBatcher
from processor.engine import Engine
from processor.errors import InferenceFailed, Unrecoverable
from processor.inflight import InFlight
from processor.slo import ScoredBatch
from processor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

# After this many consecutive batches in which nothing could be scored, and a blank probe also fails,
# the session is broken for good: stop (unready, exit 1) instead of dead-lettering the whole stream.
BROKEN_AFTER_FAILED_BATCHES = 3


def infer_isolating(engine: Engine, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run a batch; on an exception split it in halves until the failing rows are isolated.

    Returns (probs, ok) where ok[i] is False for rows that raised or came back non-finite.
    """
    n = len(tensor)
    try:
        probs = engine.infer(tensor)
    except Exception as exc:
        if n == 1:
            log.warning("inference failed for one image", extra={"error": str(exc)[:300]})
            return np.full((1, 1), np.nan, dtype=np.float32), np.zeros(1, dtype=bool)
        mid = n // 2
        left, left_ok = infer_isolating(engine, tensor[:mid])
        right, right_ok = infer_isolating(engine, tensor[mid:])
        width = max(left.shape[1], right.shape[1])
        return np.concatenate([_widen(left, width), _widen(right, width)]), np.concatenate([left_ok, right_ok])
    return probs, np.isfinite(probs).all(axis=1)


def _widen(probs: np.ndarray, width: int) -> np.ndarray:
    if probs.shape[1] == width:
        return probs
    return np.full((len(probs), width), np.nan, dtype=np.float32)


class Scorer:
    """The scoring thread. `engine_ref` is read per batch so a hot-swapped model applies from the next batch."""

    def __init__(
        self,
        batcher: MicroBatcher,
        engine_ref: Callable[[], Engine],
        on_done: Callable[[InFlight], None],
        metrics: Metrics,
    ) -> None:
        self.batcher = batcher
        self.engine_ref = engine_ref
        self.on_done = on_done
        self.metrics = metrics
        self.fatal: BaseException | None = None
        self._stop = threading.Event()
        self._failed_batches = 0
        self.batch_seconds = 0.0  # moving average of inference time per batch (read by the consumer loop)
        self._thread = threading.Thread(target=self._run, name="scorer", daemon=True)

    def start(self) -> None:
        """Start the scoring thread."""
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop taking batches and join the thread (up to `timeout_s`)."""
        self._stop.set()
        self.batcher.close()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self.batcher.next_batch(timeout_s=0.1)
                if batch is not None:
                    self.score(batch)
        except BaseException as exc:  # kept and re-raised on the consumer thread, never lost
            log.exception("scoring thread stopped")
            self.fatal = exc

    def score(self, batch: Batch) -> None:
        """Run one batch, set each event's probabilities (or its inference error) and hand it to its outcome."""
        engine = self.engine_ref()
        started = time.monotonic()
        probs, ok = infer_isolating(engine, batch.tensor)
        ok = ok[: batch.size]  # rows past `size` are static-shape padding
        elapsed_ms = (time.monotonic() - started) * 1000.0
        self.batch_seconds += 0.2 * (elapsed_ms / 1000.0 - self.batch_seconds)
        self.metrics.batch_size.observe(batch.size)
        self.metrics.stage_latency.labels(stage="inference").observe(elapsed_ms / 1000.0)
        self._watch_health(engine, batch, ok)
        for item, rows in zip(batch.items, batch.rows, strict=True):
            item.inference_ms = elapsed_ms
            item.scored_by = engine
            if ok[rows].all():
                item.probs = probs[rows]
            else:
                item.error = InferenceFailed(
                    f"model raised or returned non-finite scores for {int((~ok[rows]).sum())} of "
                    f"{rows.stop - rows.start} crop(s)"
                )
            item.crops = None  # the tensor rows are no longer needed; free them before the event is produced
            self.on_done(item)
        if self.batcher.policy.learns:
            self._observe_policy(batch, elapsed_ms / 1000.0)

    def _observe_policy(self, batch: Batch, inference_s: float) -> None:
        """Feed the batching policy what it learns from (processor.policies); only policies that adapt ask."""
        policy = self.batcher.policy
        now_wall, now = time.time(), time.monotonic()
        latencies = [item.age_s(now_wall, now) for item in batch.items]  # the SLO's end to end, so far
        waited = sum(batch.formed_at - item.decoded_at for item in batch.items) / max(1, len(batch.items))
        since_decode = [now - item.decode_started for item in batch.items]
        policy.observe(ScoredBatch(batch.size, inference_s, latencies, waited, since_decode))
        self.metrics.batch_limit.set(policy.limit)
        self.metrics.batch_wait.set(policy.wait_s)

    def _watch_health(self, engine: Engine, batch: Batch, ok: np.ndarray) -> None:
        if ok.any():
            self._failed_batches = 0
            return
        self._failed_batches += 1
        if self._failed_batches < BROKEN_AFTER_FAILED_BATCHES:
            return
        try:
            engine.warm_up(batch.tensor.shape[1:])
        except Exception as exc:
            raise Unrecoverable(
                f"inference failed for {self._failed_batches} batches in a row and on a blank probe: {exc}"
            ) from exc
