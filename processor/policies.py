"""Batching policies: when the micro-batcher hands the model a batch, and how many rows it takes.

The batcher asks its policy each time the scoring thread is free (the model is idle) and after every
wake-up; the policy answers "take n rows now" or "wait at most w seconds, or until r rows are ready".
The scorer reports every scored batch back (`observe`), which the adaptive policies learn from.

- `fixed`: a batch of MAX_BATCH_SIZE, or whatever is ready once the oldest has waited MAX_BATCH_WAIT_MS.
- `triton` (NVIDIA Triton's dynamic batcher): run as soon as a preferred batch size can be formed, the
  largest one that fits; wait only when none can, up to max_queue_delay (= MAX_BATCH_WAIT_MS).
- `cork` (BentoML's adaptive batching): fit inference time ≈ a·n + b online; keep waiting only while the
  cost of waiting, n·(newest wait + tick + a), stays under the usual wait — else dispatch.
- `aimd` (Clipper): no waiting; the batch cap grows by one after every batch whose inference stays within
  the latency target and shrinks by 10 % after one that does not.
- `slo` (ours): batch sizes from a fitted inference cost (a·rows + b) and the head's slack to the p99
  target, plus `SloController`'s limit and wait where batching pays. When a full batch costs per row more
  than 5/6 of what a lone row costs (little fixed cost per batch), ours is work-conserving: the model never
  idles while rows are ready, and rows that piled up during the last batch make the next one, so the batch
  size follows the load by itself. When batching pays (a GPU; ViT-Ti on a CPU), the law may hold the head
  for a fuller batch, but only while events queue before the batcher (on a CPU the CPU it saves goes to
  that queue; otherwise a busy model gathers a fuller batch by itself), and only while that batch still
  lands the head within 80 % of the target. Either way a batch stops at the rows that still land the head
  in time; the rest go next rather than all of them late — but where batching pays, never below the rows
  that keep up with the arrival rate the batcher measures (a smaller batch leaves more behind than it
  serves, and every head after it ages).
  Kafka events cannot be refused the way an HTTP server sheds requests (BentoML cancels those predicted to
  miss, Clockwork drops them): a lost head (it misses even scored alone now) is scored at once, with up to
  the law's limit of rows (at most half the target's worth of inference); in an overload with a backlog
  behind it, and where batching pays, in the largest batch whose inference fits half the target, the
  cheapest rows, so the backlog clears fastest without one batch making everyone behind it late. A head lost
  to the queue before the batcher (decode waiting for CPU) waits for the law's batch instead: a batch of one
  or two spends per-batch CPU that queue needs. `slo` also triages partitions (`triage_target_s`): under
  overload, a partition whose head is already lost waits, for a decode worker (processor.decode_order) and
  in the batcher (`head_lost`, `in_time_behind`), while taking it in order would make another partition's
  head late too.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from processor.slo import ScoredBatch, SloController


class PolicyName(StrEnum):
    """The batching policies DFP_BATCH_POLICY selects."""

    FIXED = "fixed"
    TRITON = "triton"
    CORK = "cork"
    AIMD = "aimd"
    SLO = "slo"


@dataclass(frozen=True, slots=True)
class QueueState:
    """What a policy sees of the batcher's ready queue (all times in seconds, measured by the batcher)."""

    rows: int  # decoded rows waiting
    oldest_wait_s: float  # how long the head event has waited in the batcher
    newest_wait_s: float  # how long the most recent event has waited in the batcher
    head_age_s: float  # end to end so far for the head event: since its Kafka timestamp (else since consume)
    arrival_rows_per_s: float = 0.0  # rows handed to the batcher per second lately (ArrivalRate; 0: unknown)


# One arrival-rate sample per this much time with arrivals. 100 ms samples of a Poisson stream at ViT-Ti's
# ~130 events/s on a CPU swing by ~30 % and showed overloads that were not there (ours fell to 2nd-3rd at 90 %
# load in three goodput runs); 250 ms samples swing by ~18 % and still see a 1 s burst within half a second.
ARRIVAL_WINDOW_S = 0.25
ARRIVAL_SMOOTHING = 0.5  # weight of the newest sample


class ArrivalRate:
    """Rows handed to the batcher per second: one sample per ARRIVAL_WINDOW_S, exponentially smoothed.

    Not thread-safe on its own: the batcher updates and reads it under its lock.
    """

    def __init__(self) -> None:
        self.rows_per_s = 0.0
        self._start: float | None = None
        self._rows = 0

    def add(self, rows: int, now: float) -> None:
        """Count `rows` that arrived at `now` (monotonic seconds)."""
        if self._start is None:
            self._start = now
        self._rows += rows
        elapsed = now - self._start
        if elapsed >= ARRIVAL_WINDOW_S:
            sample = self._rows / elapsed
            if self.rows_per_s:
                sample = ARRIVAL_SMOOTHING * sample + (1 - ARRIVAL_SMOOTHING) * self.rows_per_s
            self.rows_per_s = sample
            self._start, self._rows = now, 0


@dataclass(frozen=True, slots=True)
class Decision:
    """Take `take` rows now; or (take == 0) ask again after `wait_s`, or once `wake_rows` rows are ready."""

    take: int
    wait_s: float = 0.0
    wake_rows: int = 1


class BatchPolicy:
    """Base policy: `decide` when a batch goes out; `observe` each scored batch. `limit`/`wait_s` are gauges."""

    name = "base"
    learns = False  # True: the scorer reports every batch to `observe` (it costs a clock read per event)
    # The latency target the decode queue and the batcher triage partitions against (`head_lost`); None: FIFO.
    triage_target_s: float | None = None

    def __init__(self, max_batch_size: int, max_wait_s: float) -> None:
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.limit = max_batch_size
        self.wait_s = max_wait_s

    def decide(self, q: QueueState) -> Decision:
        """Fixed rule: a full batch at once; a partial one once its oldest event has waited `wait_s`."""
        if q.rows >= self.limit or q.oldest_wait_s >= self.wait_s:
            return Decision(self.limit)
        return Decision(0, self.wait_s - q.oldest_wait_s, self.limit)

    def observe(self, batch: ScoredBatch) -> None:
        """Record one scored batch (the policies that learn override it)."""
        return None

    def decode_remaining_s(self) -> float:
        """Predicted seconds from an event's decode start to its scored result (0: not measured)."""
        return 0.0

    def head_lost(self, age_s: float) -> bool:
        """Whether a ready event this old misses the target even if scored alone now (no target: never)."""
        return False

    def in_time_behind(self, age_s: float, rows: int) -> bool:
        """Whether a ready event this old makes the target batched in order behind `rows` rows, its own included."""
        return True


class FixedPolicy(BatchPolicy):
    """MAX_BATCH_SIZE rows, or what is ready once the oldest has waited MAX_BATCH_WAIT_MS (the default)."""

    name = PolicyName.FIXED


class TritonPolicy(BatchPolicy):
    """Triton's dynamic batcher: the largest preferred size that can be formed goes at once; else wait."""

    name = PolicyName.TRITON

    def __init__(self, max_batch_size: int, max_wait_s: float, preferred: Sequence[int] = ()) -> None:
        super().__init__(max_batch_size, max_wait_s)
        # Without configured sizes (DFP_BATCH_BUCKETS), powers of two: a lone event waits for a partner.
        sizes = [p for p in preferred if 0 < p <= max_batch_size]
        if not sizes:
            sizes = [1 << k for k in range(1, max_batch_size.bit_length())]
        self.preferred = sorted({*sizes, max_batch_size})

    def decide(self, q: QueueState) -> Decision:
        """Largest preferred size <= ready rows now; else everything once max_queue_delay has passed."""
        formable = [p for p in self.preferred if p <= q.rows]
        if formable:
            return Decision(formable[-1])
        if q.oldest_wait_s >= self.max_wait_s:
            return Decision(self.max_batch_size)
        return Decision(0, self.max_wait_s - q.oldest_wait_s, self.preferred[0])


CORK_TICK_S = 0.001  # BentoML's tick_interval
CORK_DECAY = 0.95
CORK_SAMPLES = 50  # BentoML's N_KEPT_SAMPLE


class CorkPolicy(BatchPolicy):
    """BentoML's CORK dispatcher: wait while n·(newest wait + tick + a) <= 0.95 · the usual batch wait."""

    name = PolicyName.CORK
    learns = True

    def __init__(self, max_batch_size: int, max_wait_s: float, target_s: float | None = None) -> None:
        super().__init__(max_batch_size, max_wait_s)
        latency = target_s or max(max_wait_s, 0.01)
        # BentoML's priors before any batch is measured (in seconds, from its max_latency).
        self.a, self.b = min(2.0, latency * 2.0 / 30), min(1.0, latency / 30)
        self.usual_wait_s = 0.01
        self._samples: deque[tuple[int, float, float]] = deque(maxlen=CORK_SAMPLES)

    def decide(self, q: QueueState) -> Decision:
        """Dispatch when full, or when waiting a tick longer would cost more than the usual wait."""
        n = q.rows
        # MAX_BATCH_WAIT_MS bounds the cork too: BentoML cancels requests past max_latency, Kafka events cannot be.
        if n >= self.max_batch_size or q.oldest_wait_s >= self.max_wait_s:
            return Decision(self.max_batch_size)
        if n * (q.newest_wait_s + CORK_TICK_S + self.a) <= self.usual_wait_s * CORK_DECAY:
            return Decision(0, CORK_TICK_S, n + 1)
        return Decision(n)

    def observe(self, batch: ScoredBatch) -> None:
        """Refit a, b (least squares over the last 50 batches) and the usual wait."""
        if batch.rows <= 0 or batch.inference_s <= 0:
            return
        self._samples.append((batch.rows, batch.inference_s, batch.wait_s))
        if len(self._samples) < 3:
            return
        rows = np.array([s[0] for s in self._samples], dtype=np.float64)
        if rows.min() == rows.max():  # one batch size seen: the slope is unknown, the mean cost per row is not
            self.a, self.b = max(1e-6, float(np.mean([s[1] for s in self._samples]) / rows[0])), 0.0
        else:
            x = np.stack([rows, np.ones_like(rows)], axis=1)
            (a, b), *_ = np.linalg.lstsq(x, np.array([s[1] for s in self._samples]), rcond=None)
            self.a, self.b = max(1e-6, float(a)), max(0.0, float(b))
        self.usual_wait_s = max(0.0, float(np.mean([s[2] for s in self._samples])))
        self.wait_s = self.usual_wait_s


AIMD_STEP = 1  # rows added after a batch within the target
AIMD_BACKOFF = 0.9  # Clipper's 10 % multiplicative decrease


class AimdPolicy(BatchPolicy):
    """Clipper's AIMD: take what is ready up to the cap; +1 after a batch within the target, ×0.9 after one over."""

    name = PolicyName.AIMD
    learns = True

    def __init__(self, max_batch_size: int, max_wait_s: float, target_s: float) -> None:
        super().__init__(max_batch_size, max_wait_s)
        self.target_s = target_s
        self.limit = 1
        self.wait_s = 0.0

    def decide(self, q: QueueState) -> Decision:
        """Never waits: whatever is ready, up to the current cap."""
        return Decision(min(q.rows, self.limit)) if q.rows else Decision(0, self.max_wait_s, 1)

    def observe(self, batch: ScoredBatch) -> None:
        """A batch's inference time against the target: additive increase, multiplicative decrease."""
        if batch.inference_s > self.target_s:
            self.limit = max(1, int(self.limit * AIMD_BACKOFF))
        elif batch.rows >= self.limit:  # only a full batch shows the cap was not too big
            self.limit = min(self.max_batch_size, self.limit + AIMD_STEP)


AT_RISK = 0.8  # of the target, spent (waited + predicted inference): the head must go now
# Batching pays when a full batch's cost per row is at most 1/PAYS of a lone row's. ViT-Ti on a CPU saves
# ~30 % per row from batch 1 to 4 (1.28 by the fit): at 1.5 it counted as "does not pay", ran work-conserving
# in batches of ~2, and lost to Triton's wait-for-a-partner at 75 % load in both goodput runs.
PAYS = 1.2
CONGESTED = 0.2  # of the target, spent by the head before the batcher (fetch, decode queue, decode): a queue
# A batch keeps up when the model, batching that many rows, serves this much more than the arrival rate.
KEEP_UP_MARGIN = 1.25
NEAR_BEST = 0.95  # of the model's best throughput: bigger batches gain under 5 % more and hold the model longer


class SloPolicy(BatchPolicy):
    """Ours: work-conserving unless batching pays; batches sized so the head still makes its target."""

    name = PolicyName.SLO
    learns = True

    def __init__(self, controller: SloController) -> None:
        super().__init__(controller.max_batch_size, controller.max_wait_s)
        self.controller = controller
        self.triage_target_s = controller.target_s  # under overload, lost partitions are decoded and batched last
        self.late_batches = 0  # batches sent under the overload rules (a gauge for tests and the bench)

    def decide(self, q: QueueState) -> Decision:
        """Size the batch from the head's slack and the fitted cost; wait only where a fuller batch is cheaper."""
        c = self.controller
        a, b = c.cost_model()
        # Judged at the largest batch the law allows (not its current limit, which moves with the latency).
        pays = self._batching_pays(a, b, min(self.max_batch_size, c.inference_cap()))
        # Waiting for a fuller batch pays only while events queue before the batcher: on a CPU, decode and
        # inference share the cores, so the CPU a fuller batch saves goes to that queue (the goodput bench
        # found the slowest 1 % on the tiny model waiting 50-540 ms for a decode worker and under 15 ms in
        # batcher and inference together). Otherwise a busy model gathers a fuller batch by itself while the
        # last one runs, and an idle one needs none: on ViT-Ti, waiting while the model was busy lost to
        # `aimd`, which never waits, at 75 and 90 % load.
        congested = q.head_age_s - q.oldest_wait_s > CONGESTED * c.target_s
        may_wait = pays and congested
        self.limit, self.wait_s = c.limit, (c.wait_s if may_wait else 0.0)
        decision = self._size(q, a, b, pays, may_wait)
        if decision.take and pays:
            # Where batching pays, no batch is cut below the rows that keep up with arrivals: a smaller one
            # leaves more behind than it serves, and the queue (and every head's age) grows.
            return Decision(max(decision.take, self._keep_up_rows(q.arrival_rows_per_s, a, b)))
        return decision

    def _size(self, q: QueueState, a: float, b: float, pays: bool, may_wait: bool) -> Decision:
        """The rows the head's slack allows (or a wait for a fuller batch), before the keep-up floor."""
        c = self.controller
        fits = self._rows_in_time(q.head_age_s, a, b)
        if fits == 0:  # lost: misses its target even scored alone now
            self.late_batches += 1
            if pays and c.over_target and q.rows >= self.limit:
                # A backlog: the cheapest rows clear it fastest, in the largest batch whose inference still
                # fits half the target (a GPU: MAX_BATCH_SIZE; ViT-Ti on a CPU: ~9 rows, never a 64-row,
                # 350 ms batch that makes every event behind it late).
                return Decision(min(self.max_batch_size, c.inference_cap()))
            if may_wait:
                # Lost to the queue before the batcher (decode waiting for CPU), not to the model: sending it
                # alone or in a pair spends per-batch CPU (inference thread hand-offs, the scorer's and the
                # publisher's per-batch work) that decode needs, and every event behind it waits in that queue.
                # The law's batch (full, or what is ready after its wait) costs a lost head nothing more.
                return super().decide(q)
            # Where batching does not pay, a batch past the law's limit (at most half the target's worth
            # of inference) clears the backlog no faster and blocks the model for everyone behind it.
            return Decision(self.limit)
        if not may_wait:
            # Work-conserving: the model never idles while rows are ready. Under load, rows pile up while a
            # batch runs, so batch size follows load by itself; waiting would only add latency. The batch
            # stops at the rows that still land the head in time: the rest go next, not all of them late.
            return Decision(min(self.limit, fits))
        law = super().decide(q)  # a full batch now, or wait for a fuller one
        if law.take:
            return Decision(min(law.take, fits))
        # The head may wait only while the batch the wait forms (what is ready plus what arrives meanwhile, at
        # most the limit) would still land it within AT_RISK. Judged against a full batch at the limit instead,
        # a tiny-model head at 63 of 100 ms counted as at risk and went with the one or two rows that were
        # ready: under CPU congestion that made most batches that small (see the lost-head rule above).
        forms = min(self.limit, q.rows + math.ceil(q.arrival_rows_per_s * law.wait_s))
        spare = AT_RISK * c.target_s - q.head_age_s - b - a * forms
        if fits < forms or spare <= 0:
            self.late_batches += 1
            return Decision(fits)  # at risk: it goes now, never waiting for a fuller batch
        return Decision(0, min(law.wait_s, spare), law.wake_rows)

    def _keep_up_rows(self, arrivals_per_s: float, a: float, b: float) -> int:
        """Fewest rows per batch whose throughput, n / (a·n + b), is KEEP_UP_MARGIN × the arrival rate.

        Never more than the rows that reach NEAR_BEST of the model's best throughput (1 / a): in an overload,
        where no batch keeps up, those clear the backlog almost as fast as the fullest batch without holding
        the model for longer. 0 while the arrival rate is unknown.
        """
        demand = KEEP_UP_MARGIN * arrivals_per_s
        if demand <= 0 or a <= 0:
            return 0
        near_best = math.ceil(NEAR_BEST / (1.0 - NEAR_BEST) * b / a)
        needed = near_best if demand * a >= 1.0 else math.ceil(demand * b / (1.0 - demand * a))
        return min(self.max_batch_size, near_best, needed)

    def _rows_in_time(self, head_age_s: float, a: float, b: float) -> int:
        """Most rows whose batch still lands the head within AT_RISK of the target (0: it cannot make it)."""
        slack = AT_RISK * self.controller.target_s - head_age_s - b
        if slack < a:
            return 0
        return self.max_batch_size if a <= 0 else min(self.max_batch_size, int(slack / a))

    @staticmethod
    def _batching_pays(a: float, b: float, limit: int) -> bool:
        """A full batch's cost per row is at most 1/PAYS of a lone row's (unknown cost: it does not pay yet)."""
        return a > 0 and (a + b) >= PAYS * (a + b / max(1, limit))

    def observe(self, batch: ScoredBatch) -> None:
        """Feed the controller (see processor.slo for its law)."""
        self.controller.observe(batch)
        self.limit = self.controller.limit

    def decode_remaining_s(self) -> float:
        """Predicted seconds from an event's decode start to its scored result (processor.decode_order)."""
        return self.controller.after_decode_s

    def head_lost(self, age_s: float) -> bool:
        """It cannot make AT_RISK of the target even scored alone now."""
        a, b = self.controller.cost_model()
        return self._rows_in_time(age_s, a, b) == 0

    def in_time_behind(self, age_s: float, rows: int) -> bool:
        """It makes AT_RISK of the target after `rows` rows in batches of the law's limit, at the fitted cost."""
        a, b = self.controller.cost_model()
        batches = math.ceil(rows / max(1, min(self.limit, self.controller.inference_cap())))
        return age_s + a * rows + b * batches <= AT_RISK * self.controller.target_s


def make_policy(
    name: str | None,
    max_batch_size: int,
    max_wait_s: float,
    *,
    slo: SloController | None = None,
    preferred: Sequence[int] = (),
) -> BatchPolicy:
    """The policy DFP_BATCH_POLICY names; unset means `slo` when a latency target is set, else `fixed`.

    The latency target (DFP_LATENCY_TARGET_MS) reaches the policies through `slo`; `aimd` and `slo` need it.
    """
    chosen = PolicyName(name) if name else (PolicyName.SLO if slo is not None else PolicyName.FIXED)
    target = slo.target_s if slo is not None else None
    if chosen in (PolicyName.AIMD, PolicyName.SLO) and (slo is None or target is None):
        raise ValueError(f"batch policy {chosen.value!r} needs a latency target (DFP_LATENCY_TARGET_MS)")
    if chosen is PolicyName.TRITON:
        return TritonPolicy(max_batch_size, max_wait_s, preferred)
    if chosen is PolicyName.CORK:
        return CorkPolicy(max_batch_size, max_wait_s, target)
    if chosen is PolicyName.AIMD:
        assert target is not None
        return AimdPolicy(max_batch_size, max_wait_s, target)
    if chosen is PolicyName.SLO:
        assert slo is not None
        return SloPolicy(slo)
    return FixedPolicy(max_batch_size, max_wait_s)
