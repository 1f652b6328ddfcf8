"""Which queued event a free decode worker takes next: consume order, or (ours) lost partitions last.

Results leave in input-offset order within a partition (docs/EVENTS.md), so under overload an event can only be put
behind others by putting its whole partition behind them: whatever follows a late head in its partition
waits for that head anyway. With a latency target (the `slo` policy) the queue keeps one lane per
partition and a free worker takes the oldest head that can still make the target; a lane whose head is
already lost (its age plus what decode, the batcher and inference take after it, measured on recent events,
is past the target) waits while others can make it, so an overload costs one partition its slack instead of
every partition a bit too much of it — but only while taking the lost lane's events first, in consume order, would
make the oldest live head late too: near capacity the decode queue drains by itself, and a lost lane left waiting
whenever another had events queued stayed a second behind for good (ours kept 63 % of the tiny model's events in
time at 90 % load in a goodput run where `triton`, decoding in consume order, kept 99.7 %). Without a target, or once
every head is lost, it is plain consume order (FIFO). A head lost for REVIVE_AT targets goes back in line: no partition
waits behind the others for ever.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable

from processor.inflight import InFlight

REVIVE_AT = 10.0  # targets: a head lost this long goes back in line (consume order), so no lane starves
POP_SMOOTHING = 0.1  # weight of the newest interval between pops in the measured decode interval

Lane = tuple[str, int]
FIFO_LANE: Lane = ("", -1)  # the one lane of consume order (no target)


class DecodeOrder:
    """Thread-safe queue of events waiting for a decode worker: `push` on consume, `pop` by a free worker."""

    def __init__(
        self,
        target_s: float | None = None,
        on_deferred: Callable[[], None] | None = None,
        remaining_s: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.target_s = target_s
        self._on_deferred = on_deferred  # the deepfake_decode_deferred counter
        # Predicted seconds from decode start to scored (the policy's measure; 0 until measured: a head is then
        # lost only once its age alone is past the target). A fixed share of the target deferred heads that
        # would still have made it: at 75 % load FIFO landed every event within 74 ms, and deferring at 50 ms
        # cost 8 % of the goodput.
        self._remaining_s = remaining_s
        self._lanes: dict[Lane, deque[tuple[int, InFlight]]] = {}
        self._seq = itertools.count()
        self._lock = threading.Lock()
        # Seconds between pops while events wait (the decode pool's service interval, smoothed; 0: not measured):
        # how much later the oldest live head starts decode for each lost event taken before it.
        self.pop_interval_s = 0.0
        self._busy_since: float | None = None  # the last pop, when it left events waiting

    def push(self, item: InFlight) -> None:
        """Queue one event behind the others of its partition."""
        with self._lock:
            # Consume order needs one lane: no scan of the lanes per event on the default (FIFO) path.
            lane = (item.topic, item.partition) if self.target_s is not None else FIFO_LANE
            self._lanes.setdefault(lane, deque()).append((next(self._seq), item))

    def pop(self) -> InFlight | None:
        """The event a free worker decodes next (None when nothing waits)."""
        with self._lock:
            if not self._lanes:
                return None
            now = time.monotonic()
            if self._busy_since is not None:  # events waited since the last pop: this interval is service, not idle
                sample, last = now - self._busy_since, self.pop_interval_s
                self.pop_interval_s = POP_SMOOTHING * sample + (1 - POP_SMOOTHING) * last if last else sample
            lane = self._next_lane(now)
            queue = self._lanes[lane]
            item = queue.popleft()[1]
            if not queue:
                del self._lanes[lane]
            # Only triage reads the interval: consume order (no target) measures nothing.
            self._busy_since = now if self._lanes and self.target_s is not None else None
            return item

    def __len__(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._lanes.values())

    def _next_lane(self, now_mono: float) -> Lane:
        if len(self._lanes) == 1:
            return next(iter(self._lanes))
        oldest = min(self._lanes, key=lambda lane: self._lanes[lane][0][0])
        now_wall = time.time()
        remaining_s = self._remaining_s()
        ages = {lane: q[0][1].age_s(now_wall, now_mono) for lane, q in self._lanes.items()}
        live = {lane for lane in self._lanes if not self._lost(ages[lane], remaining_s)}
        if not live or oldest in live:
            return oldest
        first_live = min(live, key=lambda lane: self._lanes[lane][0][0])
        assert self.target_s is not None
        slack_s = self.target_s - ages[first_live] - remaining_s
        if not self._lost_ahead_at_least(self._lanes[first_live][0][0], live, slack_s):
            return oldest  # consume order still lands the oldest live head in time: the lost lane loses nothing more
        if self._on_deferred is not None:
            self._on_deferred()
        return first_live

    def _lost_ahead_at_least(self, seq: int, live: set[Lane], slack_s: float) -> bool:
        """Whether the lost lanes' events consumed before `seq` take `slack_s` or more to decode (consume order).

        Counts only up to that many, so a deep queue costs a pop no more than the live head's slack allows.
        """
        if self.pop_interval_s <= 0:
            return slack_s <= 0
        needed = slack_s / self.pop_interval_s
        ahead = 0
        for lane, queue in self._lanes.items():
            if lane in live:
                continue
            for entry_seq, _ in queue:
                if entry_seq >= seq:
                    break
                ahead += 1
                if ahead >= needed:
                    return True
        return ahead >= needed

    def _lost(self, age_s: float, remaining_s: float) -> bool:
        assert self.target_s is not None
        return self.target_s <= age_s + remaining_s and age_s < REVIVE_AT * self.target_s
