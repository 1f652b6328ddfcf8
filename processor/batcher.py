"""Micro-batcher: hands the scorer a batch when its policy (processor.policies) says one is due."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from processor.inflight import InFlight
from processor.policies import ArrivalRate, BatchPolicy, QueueState, make_policy
from processor.slo import SloController


@dataclass(slots=True)
class Batch:
    """Events and their crops stacked into one NCHW tensor (a view of the batcher's preallocated buffer)."""

    items: list[InFlight]
    tensor: np.ndarray
    # rows[i] is the slice of `tensor` that belongs to items[i] (one row per face, or one for the whole image).
    rows: list[slice]
    formed_at: float
    size: int = 0  # real rows; tensor may be longer when padded up to a static bucket size


class MicroBatcher:
    """Thread-safe: decode workers `put`, the scoring thread `next_batch`. Never splits an event across batches."""

    def __init__(
        self,
        max_batch_size: int,
        max_wait_s: float,
        sample_shape: tuple[int, int, int],
        *,
        buckets: tuple[int, ...] = (),
        slo: SloController | None = None,
        capacity_rows: int = 0,
        policy: BatchPolicy | str | None = None,
        defer_lost: bool = False,
        on_deferred: Callable[[float], None] | None = None,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        # Static shapes: each batch is zero-padded up to the next bucket so the engine only ever sees
        # shapes it warmed (TensorRT engines, CUDA graphs); empty = dynamic batch size.
        self.buckets = tuple(sorted(b for b in buckets if b > 0))
        self.slo = slo
        self.policy = (
            policy
            if isinstance(policy, BatchPolicy)
            else make_policy(policy, max_batch_size, max_wait_s, slo=slo, preferred=self.buckets)
        )
        self.capacity_rows = capacity_rows or 2 * max_batch_size
        # Partition triage (ours, DFP_DEFER_LOST_PARTITIONS; see _order): lost partitions go last when batching
        # them in order would make a partition that can still make the latency target late.
        self._triage = defer_lost and self.policy.triage_target_s is not None
        self._on_deferred = on_deferred  # the deepfake_batch_deferred counter: events batched ahead of a lost head
        self._ready: deque[tuple[float, InFlight]] = deque()
        self._ready_rows = 0
        self._arrivals = ArrivalRate()  # what the policy sizes a batch that keeps up against
        self._wake_rows = 1  # put() wakes the scoring thread once this many rows are ready (the policy says)
        self._cond = threading.Condition()
        self._closed = False
        # Preallocated once; every batch is a prefix view of it (no per-batch allocation on the hot path).
        capacity = max(max_batch_size, *self.buckets) if self.buckets else max_batch_size
        self._buffer = np.empty((capacity, *sample_shape), dtype=np.float32)

    def put(self, item: InFlight) -> None:
        """Hand in a decoded event; blocks the decode worker while `capacity_rows` decoded rows already wait.

        The bound keeps decode from running far ahead of inference: decoded tensors (0.6 MB per 224×224
        crop) would otherwise pile up to MAX_IN_FLIGHT of them, costing memory and queueing latency, while
        undecoded events wait cheaply as bytes in the decode pool's queue.
        """
        assert item.crops is not None
        with self._cond:
            while self._ready_rows >= self.capacity_rows and not self._closed:
                self._cond.wait()
            now = time.monotonic()
            self._ready.append((now, item))
            self._ready_rows += len(item.crops)
            self._arrivals.add(len(item.crops), now)
            if self._ready_rows >= self._wake_rows or len(self._ready) == 1:
                self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._ready)

    def close(self) -> None:
        """Stop waiting: blocked `put`s return, and `next_batch` hands out what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def next_batch(self, timeout_s: float) -> Batch | None:
        """Block until the policy says a batch is due (default: full, or oldest waited max_wait) or timeout.

        None on timeout, or on close once nothing is left.
        """
        items, rows, now = self._wait_for_due(timeout_s)
        # Stacking runs outside the lock so decode workers keep handing in events meanwhile; only this
        # (scoring) thread touches the buffer, and it asks for the next batch only after the last one ran.
        return self._stack(items, rows, now) if items else None

    def _wait_for_due(self, timeout_s: float) -> tuple[list[InFlight], int, float]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                now = time.monotonic()
                wait = deadline - now
                if self._ready:
                    order = self._order(now)
                    decision = self.policy.decide(self._state(order, now))
                    if decision.take > 0:
                        return (*self._take(decision.take, order), now)
                    wait = min(wait, decision.wait_s)
                    self._wake_rows = max(1, decision.wake_rows)
                if self._closed or now >= deadline:
                    if self._closed and self._ready:
                        return (*self._take(self.max_batch_size, self._ready), now)
                    return [], 0, now
                self._cond.wait(max(wait, 0.0))

    def _order(self, now: float) -> Sequence[tuple[float, InFlight]]:
        """The ready events a batch is formed from, oldest first: all of them, or (triage) the live partitions'.

        Results leave in offset order within a partition, so an event behind a lost head is late with it. When
        the oldest event is lost and batching in order would make the oldest live one late too, the partitions
        that can still make the target go first: the lost ones lose nothing they had not lost already, and a
        queue at the model does not make everyone late (Clockwork's rule, without dropping). A lost partition
        waits until no live rows are ready, or until its rows fill the batcher (`put` then blocks decode, so
        no live rows can arrive): no partition waits for ever.
        """
        if not self._triage or len(self._ready) < 2:
            return self._ready
        wall = time.time()
        head = self._ready[0][1]
        if not self.policy.head_lost(head.age_s(wall, now)):
            return self._ready  # younger heads are live too
        lost = {(head.topic, head.partition)}
        live: set[tuple[str, int]] = set()
        rows_ahead, live_age = 0, None
        for _, item in self._ready:
            lane = (item.topic, item.partition)
            if live_age is None:
                rows_ahead += _rows(item)
            if lane not in lost and lane not in live:
                age = item.age_s(wall, now)
                if self.policy.head_lost(age):
                    lost.add(lane)
                else:
                    live.add(lane)
                    if live_age is None:
                        live_age = age
        if live_age is None or self.policy.in_time_behind(live_age, rows_ahead):
            return self._ready
        return [entry for entry in self._ready if (entry[1].topic, entry[1].partition) in live]

    def _state(self, order: Sequence[tuple[float, InFlight]], now: float) -> QueueState:
        queued_at, head = order[0]
        rows = self._ready_rows if order is self._ready else sum(_rows(item) for _, item in order)
        age = head.age_s(time.time(), now)
        return QueueState(rows, now - queued_at, now - order[-1][0], age, self._arrivals.rows_per_s)

    def _take(self, limit: int, order: Sequence[tuple[float, InFlight]]) -> tuple[list[InFlight], int]:
        items: list[InFlight] = []
        rows = 0
        for _, item in order:
            if items and rows + _rows(item) > limit:
                break
            items.append(item)
            rows += _rows(item)
        if order is self._ready:
            for _ in items:
                self._ready.popleft()
        else:
            taken = {id(item) for item in items}
            self._ready = deque(entry for entry in self._ready if id(entry[1]) not in taken)
            if self._on_deferred is not None:
                self._on_deferred(len(items))
        self._ready_rows -= rows
        self._cond.notify_all()  # room again for decode workers blocked in put()
        return items, rows

    def _stack(self, items: list[InFlight], rows: int, now: float) -> Batch:
        # A lone event with more faces than the buffer holds gets its own tensor (rare; MAX_FACES bounds it).
        padded = next((b for b in self.buckets if b >= rows), rows)
        tensor = (
            self._buffer[:padded]
            if padded <= len(self._buffer)
            else np.empty((padded, *self._buffer.shape[1:]), dtype=np.float32)
        )
        if padded > rows:
            tensor[rows:] = 0.0
        slices: list[slice] = []
        start = 0
        for item in items:
            assert item.crops is not None
            end = start + len(item.crops)
            tensor[start:end] = item.crops
            slices.append(slice(start, end))
            start = end
        return Batch(items=items, tensor=tensor, rows=slices, formed_at=now, size=rows)


def _rows(item: InFlight) -> int:
    """Rows an event takes in a batch (one per face, or one for the whole image)."""
    assert item.crops is not None
    return len(item.crops)
