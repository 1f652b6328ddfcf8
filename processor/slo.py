"""SLO-adaptive batching: tunes the batcher's size limit and wait online to keep p99 end-to-end under a target.

Bigger batches and longer waits buy throughput (fewer, fuller inference calls) at the price of latency.
Every few batches the controller compares the p99 of recently scored events (from their Kafka timestamp)
with the target, aiming below it (noise makes a controller that aims at the target miss it half the time):
- p99 above 80 % of the target while batches leave half-empty and the wait for a fuller batch is a real
  part of that latency: halve the wait. The limit stays: a limit batches never reach costs no latency, and
  shrinking it would only make inference less efficient;
- p99 above the target otherwise (batches full, or latency that built up before the batcher — events
  queueing for decode or for the model): that is a queue, and only more throughput drains a queue, so
  double the limit and lengthen the wait (fuller batches cost less per image). Shortening waits here would
  make batches smaller and the overload worse;
- p99 under half the target: let the wait and the limit creep back up for efficiency;
- always: keep the limit where a full batch's inference takes at most half the target (measured per row),
  so one batch alone can never spend the budget (ViT-B/16 on a CPU: ~0.5 s per image);
- always: wait at most a tenth of the target (and MAX_BATCH_WAIT_MS). Waiting spends the slack that absorbs
  noise (a shared CPU, a GC pause, a slow produce); the goodput bench on Apache Kafka showed a controller free
  to wait half the target land its events near the target and lose them to the first hiccup;
- the policy (processor.policies) uses the wait only while events queue before the batcher; otherwise a
  busy model gathers a fuller batch by itself while the last one runs, and an idle one needs none.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

WINDOW = 256  # latencies kept for the p99 estimate
ADJUST_EVERY = 8  # batches between adjustments
MIN_WAIT_S = 0.0002
INFERENCE_SHARE = 0.5  # of the target, the most one full batch's inference may take
HIGH, LOW = 0.8, 0.5  # of the target: shorten the wait above HIGH, relax below LOW
WAIT_SHARE = 0.1  # of p99, the batcher wait that counts as "a real part of the latency"
WAIT_BUDGET = 0.1  # of the target, the longest the batcher may hold an event for a fuller batch
COST_WINDOW = 64  # batches behind the fitted inference cost a·rows + b
AFTER_DECODE_QUANTILE = 90  # percentile of decode start → scored that predicts an event's remaining time


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """What the scorer reports to the batching policy after each batch (seconds throughout)."""

    rows: int
    inference_s: float = 0.0
    latencies_s: Sequence[float] = ()  # per event: end to end so far (from the Kafka timestamp)
    wait_s: float = 0.0  # mean time its events spent in the batcher
    since_decode_s: Sequence[float] = ()  # per event: since its decode started (what the decode order predicts with)


class SloController:
    """Owned by the scorer thread (observe) and read by the batcher (limit, wait_s) under the batcher's lock."""

    def __init__(self, target_s: float, max_batch_size: int, max_wait_s: float) -> None:
        self.target_s = target_s
        self.max_batch_size = max_batch_size
        self.max_wait_s = min(max_wait_s, WAIT_BUDGET * target_s)
        self.over_target = False  # the last adjustment saw p99 above the target
        self.limit = max_batch_size
        self.wait_s = self.max_wait_s
        self._latencies: deque[float] = deque(maxlen=WINDOW)
        self._fills: deque[float] = deque(maxlen=ADJUST_EVERY)
        self._waits: deque[float] = deque(maxlen=ADJUST_EVERY)  # mean seconds a batch's events spent in the batcher
        self._costs: deque[tuple[int, float]] = deque(maxlen=COST_WINDOW)  # (rows, inference s) per batch
        self._after_decode: deque[float] = deque(maxlen=WINDOW)  # per event: decode start → scored, seconds
        # Its AFTER_DECODE_QUANTILE, refreshed every ADJUST_EVERY batches: what an event that starts decode now
        # still has to spend (decode, batcher, inference). Read by the decode order (processor.decode_order).
        self.after_decode_s = 0.0
        self._fit = (0.0, 0.0)  # (a s per row, b s per batch), refitted every ADJUST_EVERY batches
        self._cap = max_batch_size  # inference_cap(), recomputed per batch (the batcher reads it per decision)
        self._batches = 0
        self._lock = threading.Lock()

    def observe(self, batch: ScoredBatch) -> None:
        """Record one scored batch: latencies for the p99, fill and wait for the law, inference for the cost fit."""
        with self._lock:
            self._latencies.extend(batch.latencies_s)
            self._after_decode.extend(batch.since_decode_s)
            self._fills.append(batch.rows / max(1, self.limit))
            self._waits.append(batch.wait_s)
            if batch.inference_s > 0 and batch.rows > 0:
                self._costs.append((batch.rows, batch.inference_s))
                if len(self._costs) <= ADJUST_EVERY or self._batches % ADJUST_EVERY == 0:
                    self._fit = fit_cost(self._costs)
                self._cap = self._rows_within_inference_share()
            self._batches += 1
            if self._batches % ADJUST_EVERY:
                return
            if self._after_decode:
                self.after_decode_s = float(
                    np.percentile(np.fromiter(self._after_decode, float), AFTER_DECODE_QUANTILE)
                )
            if len(self._latencies) >= 16:
                self._adjust(float(np.percentile(np.fromiter(self._latencies, float), 99)))

    def _adjust(self, p99_s: float) -> None:
        self.over_target = p99_s > self.target_s
        full = float(np.mean(self._fills)) >= 0.9
        wait_matters = float(np.mean(self._waits)) >= WAIT_SHARE * p99_s
        if p99_s > HIGH * self.target_s and wait_matters and not full:
            self.wait_s = max(MIN_WAIT_S, self.wait_s / 2)
        elif p99_s > self.target_s:
            self.limit = min(self.max_batch_size, self.limit * 2)
            self.wait_s = min(self.max_wait_s, self.wait_s * 1.25 + MIN_WAIT_S)
        elif p99_s < LOW * self.target_s:
            self.wait_s = min(self.max_wait_s, self.wait_s * 1.25 + MIN_WAIT_S)
            self.limit = min(self.max_batch_size, self.limit + max(1, self.limit // 8))
        self.limit = max(1, min(self.limit, self._cap))
        self._latencies.clear()

    def cost_model(self) -> tuple[float, float]:
        """(a, b): inference ≈ a·rows + b seconds, fitted over the last COST_WINDOW batches ((0, 0) before any)."""
        return self._fit

    def inference_cap(self) -> int:
        """Rows whose inference fits in INFERENCE_SHARE of the target, at the cost per row of the last batches."""
        return self._cap

    def _rows_within_inference_share(self) -> int:
        recent = list(self._costs)[-ADJUST_EVERY:]
        rows = sum(r for r, _ in recent)
        if not rows:
            return self.max_batch_size
        per_row_s = sum(s for _, s in recent) / rows
        return max(1, int(INFERENCE_SHARE * self.target_s / per_row_s))


def fit_cost(samples: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares a·rows + b through (rows, seconds) samples; all one size → (mean per row, 0): b unknown.

    b is the per-batch part of inference (kernel launches, the framework's fixed cost): what a fuller batch
    saves per extra row. Until batches of different sizes were seen, it is taken as 0 — batching does not
    pay until shown to.
    """
    rows = np.array([r for r, _ in samples], dtype=np.float64)
    seconds = np.array([s for _, s in samples], dtype=np.float64)
    if rows.size == 0:
        return 0.0, 0.0
    if rows.min() == rows.max():
        return float(seconds.sum() / rows.sum()), 0.0
    (a, b), *_ = np.linalg.lstsq(np.stack([rows, np.ones_like(rows)], axis=1), seconds, rcond=None)
    if a <= 0:  # noise on a flat cost: all of it is per batch
        return 1e-6, float(max(0.0, seconds.mean()))
    return float(a), float(max(0.0, b))
