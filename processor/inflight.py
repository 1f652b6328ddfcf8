"""The one object that follows an event through every stage: consume → decode → batch → score → publish → commit."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures import Future

    import numpy as np

    from processor.engine import Engine
    from processor.errors import ProcessorError
    from schemas import FaceBox

Headers = list[tuple[str, bytes]]


@dataclass(slots=True, eq=False)
class Outcome:
    """What to produce for an event: a result (to OUTPUT_TOPIC) or a dead letter (to DLQ_TOPIC)."""

    topic: str
    value: bytes
    headers: Headers
    label: str | None = None  # result label, for metrics
    code: str | None = None  # dead-letter code, for metrics


@dataclass(slots=True, eq=False)
class InFlight:
    """An event between consume and commit; only the consumer thread sets the delivery fields (produced_at, acked)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers | None
    timestamp_ms: int | None
    consumed_at: float = field(default_factory=time.monotonic)
    # Set by the decode stage.
    event_id: str = ""
    post_id: str | None = None
    user_id: str | None = None
    metadata: dict[str, Any] | None = None
    faces: list[FaceBox] | None = None
    crops: np.ndarray | None = None  # (k, 3, H, W) float32, one row per face (or the whole image)
    decode_started: float = 0.0
    decoded_at: float = 0.0
    error: ProcessorError | None = None
    # Set by the scoring stage.
    probs: np.ndarray | None = None  # (k, C)
    inference_ms: float = 0.0
    scored_by: Engine | None = None
    # Set by processor.outcomes on the thread that decided the event's fate (a decode worker or the scorer);
    # read by the consumer thread only after the event came through the `decided` queue.
    outcome: Outcome | None = None
    # Set for events of the synchronous HTTP API (/detect): resolved instead of producing to Kafka.
    waiter: Future[InFlight] | None = None
    produced_at: float = 0.0
    acked: bool = False

    def age_s(self, now_wall: float, now_mono: float) -> float:
        """End to end so far: since the Kafka timestamp when there is one (the SLO's definition), else since consume."""
        if self.timestamp_ms is not None:
            return now_wall - self.timestamp_ms / 1000.0
        return now_mono - self.consumed_at

    @property
    def fallback_event_id(self) -> str:
        """`topic:partition:offset`, the id of an event that carries none."""
        return f"{self.topic}:{self.partition}:{self.offset}"
