"""Outcome stage: turns each event's fate into its one outcome — a result or a dead letter — and hands it on.

Called directly on the thread that decided the fate: a decode worker (the event failed a check) or the
scorer (the batch ran). The decided event goes onto the `decided` queue that the consumer thread drains:
that queue is the one hand-off from worker threads back to the consumer, which produces in offset order.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import time
from datetime import UTC, datetime
from typing import Any, Protocol

from processor.errors import ProcessorError
from processor.inflight import Headers, InFlight, Outcome
from processor.telemetry.metrics import Metrics
from schemas import FaceScore, ScoreResult, SourceRef, StageTimings

log = logging.getLogger(__name__)

#: Decided events, from decode/scoring threads to the consumer thread (see module docstring).
Decided = queue.SimpleQueue[InFlight]


class DecidedSink(Protocol):
    """Where decided events go: the consumer's `Decided` queue in the service, a counter in the bench."""

    def put(self, item: InFlight) -> None:
        """Take one decided event (called on decode/scoring threads)."""
        ...


class Outcomes:
    """Builds each event's outcome on the deciding thread, counts it, and puts the event on `decided`."""

    def __init__(self, output_topic: str, dlq_topic: str, metrics: Metrics, decided: DecidedSink) -> None:
        self.output_topic = output_topic
        self.dlq_topic = dlq_topic
        self.metrics = metrics
        self.decided = decided
        # Labelled children looked up once: `.labels()` takes a lock and builds a key, five times per event.
        latency = metrics.stage_latency
        self._queue, self._decode = latency.labels(stage="queue"), latency.labels(stage="decode")
        self._produce, self._e2e = latency.labels(stage="produce"), latency.labels(stage="end_to_end")
        self._scored: dict[str, Any] = {}

    def decide(self, item: InFlight) -> None:
        """Set `item.outcome` (result or dead letter), count it, and hand the event to the consumer thread.

        An event of the synchronous HTTP API (/detect) is answered through its waiter instead.
        """
        if item.waiter is not None:
            item.waiter.set_result(item)
            return
        m = self.metrics
        if item.error is not None:
            item.outcome = dead_letter_outcome(item, item.error, self.dlq_topic)
            m.dead_lettered.labels(code=item.error.code).inc()
            if log.isEnabledFor(logging.DEBUG):  # one line per dead letter, never at INFO (hot path)
                where = {"topic": item.topic, "partition": item.partition, "offset": item.offset}
                log.debug("dead letter", extra={**where, "event_id": item.event_id, "error.code": item.error.code})
        else:
            item.outcome = result_outcome(item, self.output_topic)
            label = item.outcome.label or ""
            scored = self._scored.get(label)
            if scored is None:
                scored = self._scored[label] = m.scored.labels(label=label)
            scored.inc()
        if item.decode_started:
            self._queue.observe(item.decode_started - item.consumed_at)
            self._decode.observe(max(0.0, item.decoded_at - item.decode_started))
        self.decided.put(item)

    def delivered(self, item: InFlight) -> None:
        """The broker acknowledged the event's outcome: record produce and end-to-end latency."""
        now = time.monotonic()
        self._produce.observe(now - item.produced_at)
        if item.timestamp_ms is not None:
            self._e2e.observe(max(0.0, time.time() - item.timestamp_ms / 1000.0))


def _ms(start: float, end: float) -> float:
    return round(max(0.0, end - start) * 1000.0, 3)


def result_fields(item: InFlight) -> dict[str, Any]:
    """The result fields (docs/EVENTS.md) of a scored item, all but Kafka's `source` (shared with the /detect API).

    With faces, the event's score is the face with the highest fake score.
    """
    assert item.probs is not None and item.scored_by is not None
    labels, model = item.scored_by.labels, item.scored_by.ref
    rows: list[list[float]] = item.probs.tolist()  # Python floats: rounding a numpy scalar costs ~10x more
    fake = labels.fake_index
    # Plain Python: np.argmax on a one-row array cost 3.6 % of the scoring thread (py-spy, e2e on Kafka).
    worst = 0 if len(rows) == 1 else max(range(len(rows)), key=lambda i: rows[i][fake])
    label, is_fake, fake_score, scores = labels.fields(rows[worst])
    faces = None
    if item.faces:
        faces = []
        for box, row in zip(item.faces, rows, strict=True):
            face_label, _, face_score, _ = labels.fields(row)
            faces.append(FaceScore(box=box, fake_score=face_score, label=face_label))
    now = time.monotonic()
    return {
        "event_id": item.event_id,
        "post_id": item.post_id,
        "user_id": item.user_id,
        "label": label,
        "is_fake": is_fake,
        "fake_score": fake_score,
        "scores": scores,
        "faces": faces,
        "model": model,
        "timings_ms": StageTimings(
            queue=_ms(item.consumed_at, item.decode_started),
            decode=_ms(item.decode_started, item.decoded_at),
            inference=round(item.inference_ms, 3),
            total=_ms(item.consumed_at, now),
        ),
        "metadata": item.metadata,
        "processed_at": _utc_now(),
    }


def result_outcome(item: InFlight, output_topic: str) -> Outcome:
    """Build the result (docs/EVENTS.md) message for OUTPUT_TOPIC."""
    fields = result_fields(item)
    result = ScoreResult(**fields, source=SourceRef(topic=item.topic, partition=item.partition, offset=item.offset))
    headers: Headers = [("event_id", item.event_id.encode())]
    return Outcome(
        topic=output_topic,
        value=result.model_dump_json(exclude_none=True).encode(),
        headers=headers,
        label=result.label,
    )


def dead_letter_outcome(item: InFlight, error: ProcessorError, dlq_topic: str) -> Outcome:
    """The original value byte-for-byte plus the error and source headers (docs/EVENTS.md); its own headers first."""
    headers: Headers = list(item.headers or [])
    headers += [
        ("error.code", error.code.encode()),
        ("error.message", error.message.encode("utf-8", errors="replace")[:2000]),
        ("error.stage", error.stage.encode()),
        ("source.topic", item.topic.encode()),
        ("source.partition", str(item.partition).encode()),
        ("source.offset", str(item.offset).encode()),
        ("source.timestamp", str(item.timestamp_ms if item.timestamp_ms is not None else "").encode()),
    ]
    if item.event_id:
        headers.append(("event_id", item.event_id.encode("utf-8", errors="replace")))
    return Outcome(topic=dlq_topic, value=item.value, headers=headers, code=error.code)


#: How much of the payload a dead letter keeps when its topic refused the whole message for size.
TRUNCATED_PAYLOAD_BYTES = 64 * 1024


def truncated_dead_letter_outcome(
    item: InFlight, error: ProcessorError, dlq_topic: str, keep_bytes: int = TRUNCATED_PAYLOAD_BYTES
) -> Outcome:
    """The dead letter of `item` with its payload cut to `keep_bytes`, for when a topic refused the full message.

    Headers say what was cut: `payload.truncated` (`true`, or `false` when the payload already fit),
    `payload.original_size` (bytes) and `payload.sha256` (hex digest of the full payload), so a consumer can
    tell the copy from the original and match it against the input topic.

    Args:
        item: The event whose result or dead letter was refused.
        error: Why it is dead-lettered (its own error, or `ResultTooLarge` for a refused result).
        dlq_topic: The dead-letter topic.
        keep_bytes: The most payload bytes to keep.

    Returns:
        The dead-letter outcome to produce instead.
    """
    outcome = dead_letter_outcome(item, error, dlq_topic)
    value = item.value
    outcome.headers += [
        ("payload.truncated", b"true" if len(value) > keep_bytes else b"false"),
        ("payload.original_size", str(len(value)).encode()),
        ("payload.sha256", hashlib.sha256(value).hexdigest().encode()),
    ]
    outcome.value = value[:keep_bytes]
    return outcome


_last_now: tuple[int, str] = (0, "")


def _utc_now() -> str:
    """ISO 8601 UTC to the millisecond; a batch's results share one formatting per millisecond."""
    global _last_now
    ms = time.time_ns() // 1_000_000
    if _last_now[0] != ms:  # a race only formats the same instant twice
        _last_now = (
            ms,
            datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        )
    return _last_now[1]
