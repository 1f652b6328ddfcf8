"""SLO-adaptive batching: tunes the batcher's size limit and wait online to keep p99 end-to-end under a target.

Bigger batches and longer waits buy throughput (fewer, fuller inference calls) at the price of latency.
The controller watches the end-to-end latency of recently scored events (from their Kafka timestamp) and:
- p99 above the target while batches leave half-empty (the wait for a fuller batch dominates): halve the
  wait; the limit stays, since a limit batches never reach costs nothing and shrinking it would only make
  inference less efficient;
- p99 above the target while batches are full (queueing: the model is the bottleneck): double the batch
  limit, since only more throughput drains a queue — shrinking batches would make it worse;
- p99 comfortably below the target (< 60 %): let the wait and the limit creep back up for efficiency;
- always: keep the limit where a full batch's inference takes at most half the target (measured per row),
  so one batch alone can never spend the budget (ViT-B/16 on a CPU: ~0.5 s per image).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

import numpy as np

WINDOW = 256  # latencies kept for the p99 estimate
ADJUST_EVERY = 8  # batches between adjustments
MIN_WAIT_S = 0.0002
INFERENCE_SHARE = 0.5  # of the target, the most one full batch's inference may take


class SloController:
    """Owned by the scorer thread (observe) and read by the batcher (limit, wait_s) under the batcher's lock."""

    def __init__(self, target_s: float, max_batch_size: int, max_wait_s: float) -> None:
        self.target_s = target_s
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.limit = max_batch_size
        self.wait_s = max_wait_s
        self._latencies: deque[float] = deque(maxlen=WINDOW)
        self._fills: deque[float] = deque(maxlen=ADJUST_EVERY)
        self._inference: deque[tuple[float, int]] = deque(maxlen=ADJUST_EVERY)  # (seconds, rows) per batch
        self._batches = 0
        self._lock = threading.Lock()

    def observe(self, latencies_s: Sequence[float], batch_rows: int, inference_s: float = 0.0) -> None:
        """Record one scored batch: its events' end-to-end latencies so far, how full it was, its inference time."""
        with self._lock:
            self._latencies.extend(latencies_s)
            self._fills.append(batch_rows / max(1, self.limit))
            if inference_s > 0 and batch_rows > 0:
                self._inference.append((inference_s, batch_rows))
            self._batches += 1
            if self._batches % ADJUST_EVERY == 0 and len(self._latencies) >= 16:
                self._adjust(float(np.percentile(np.fromiter(self._latencies, float), 99)))

    def _adjust(self, p99_s: float) -> None:
        full = float(np.mean(self._fills)) >= 0.9
        if p99_s > self.target_s and full:
            self.limit = min(self.max_batch_size, self.limit * 2)
        elif p99_s > 0.9 * self.target_s and not full:
            self.wait_s = max(MIN_WAIT_S, self.wait_s / 2)
        elif p99_s < 0.6 * self.target_s:
            self.wait_s = min(self.max_wait_s, self.wait_s * 1.25 + MIN_WAIT_S)
            self.limit = min(self.max_batch_size, self.limit + max(1, self.limit // 8))
        self.limit = max(1, min(self.limit, self._inference_cap()))
        self._latencies.clear()

    def _inference_cap(self) -> int:
        """Rows whose inference fits in INFERENCE_SHARE of the target, at the recently measured cost per row."""
        rows = sum(r for _, r in self._inference)
        if not rows:
            return self.max_batch_size
        per_row_s = sum(s for s, _ in self._inference) / rows
        return max(1, int(INFERENCE_SHARE * self.target_s / per_row_s))

    def p99_ms(self) -> float | None:
        with self._lock:
            if not self._latencies:
                return None
            return float(np.percentile(np.fromiter(self._latencies, float), 99)) * 1000.0
