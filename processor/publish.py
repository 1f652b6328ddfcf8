"""Publish stage: builds result / dead-letter messages from the wire schemas and produces them with acknowledgement."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from processor.errors import ProcessorError, Unrecoverable
from processor.inflight import Headers, InFlight, Outcome
from schemas import FaceScore, ScoreResult, SourceRef, StageTimings

log = logging.getLogger(__name__)


def _ms(start: float, end: float) -> float:
    return round(max(0.0, end - start) * 1000.0, 3)


def result_fields(item: InFlight) -> dict[str, Any]:
    """The SPEC §5 result fields of a scored item, all but Kafka's `source` (shared with the /detect API).

    With faces, the event's score is the face with the highest fake score.
    """
    assert item.probs is not None and item.scored_by is not None
    labels, model = item.scored_by.labels, item.scored_by.ref
    rows: list[list[float]] = item.probs.tolist()  # Python floats: rounding a numpy scalar costs ~10x more
    worst = int(np.argmax(item.probs[:, labels.fake_index]))
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
    """Build the SPEC §5 result message for OUTPUT_TOPIC."""
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
    """The original value byte-for-byte plus the SPEC §5 error and source headers (original headers kept first)."""
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


# DFP_KAFKA_* goes to both clients; these consumer-only keys would make librdkafka warn on the producer.
CONSUMER_ONLY_PREFIXES = (
    "group.",
    "session.timeout",
    "heartbeat.",
    "max.poll",
    "auto.",
    "enable.auto",
    "fetch.",
    "partition.assignment",
    "isolation.level",
    "queued.",
    "enable.partition.eof",
    "check.crcs",
    "allow.auto.create",
    "max.partition.fetch",
)


def producer_config(
    bootstrap: str, passthrough: dict[str, str], max_message_bytes: int, transactional_id: str | None
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,  # no duplicates or reordering from producer retries
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": 5,  # pipelines many small results into one request without adding visible latency
        # Any consumed event must fit back out verbatim as a dead letter (SPEC §5).
        "message.max.bytes": max_message_bytes,
        "client.id": "deepfake-processor",
        "logger": logging.getLogger("librdkafka.producer"),
    }
    if transactional_id:
        config["transactional.id"] = transactional_id
    config.update({k: v for k, v in passthrough.items() if not k.startswith(CONSUMER_ONLY_PREFIXES)})
    return config


class Publisher:
    """Produces outcomes; the delivery callback marks events acknowledged (it runs inside `poll`, on our thread)."""

    def __init__(self, config: dict[str, Any], on_ack: Callable[[InFlight], None], on_error: Callable[[str], None]):
        self.producer = Producer(config)
        self._on_ack = on_ack
        self._on_error = on_error
        self.fatal: Unrecoverable | None = None

    def produce(self, item: InFlight) -> None:
        outcome = item.outcome
        assert outcome is not None
        item.produced_at = time.monotonic()
        while True:
            try:
                self.producer.produce(
                    outcome.topic,
                    value=outcome.value,
                    key=item.key,
                    headers=outcome.headers,  # type: ignore[arg-type]
                    on_delivery=self._callback(item),
                )
                return
            except BufferError:
                # Local queue full: serve delivery reports to make room, then retry (never drop).
                self.producer.poll(0.05)

    def _callback(self, item: InFlight) -> Callable[[KafkaError | None, Message], None]:
        return lambda err, msg: self._delivered(item, err, msg)

    def _delivered(self, item: InFlight, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            item.acked = True
            self._on_ack(item)
            return
        # librdkafka already retried (idempotent producer); a failure here is final for this message.
        # Its offset must never be committed: record the first one and stop the loop.
        topic = msg.topic() or "?"
        self._on_error(topic)
        log.error(
            "delivery failed",
            extra={
                "topic": item.topic,
                "partition": item.partition,
                "offset": item.offset,
                "event_id": item.event_id,
                "error": str(err),
            },
        )
        if self.fatal is None:
            self.fatal = Unrecoverable(f"delivery to {topic} failed for offset {item.offset}: {err}")

    def produce_transaction(self, items: list[InFlight], group_metadata: Any) -> dict[tuple[str, int], int]:
        """Exactly-once: the items' outputs and their input offsets commit atomically, or nothing does.

        Returns the committed offsets (offset + 1 per partition). The items are released in offset order,
        so each partition's last item is its new commit point.
        """
        offsets: dict[tuple[str, int], int] = {}
        try:
            self.producer.begin_transaction()
            for item in items:
                self.produce(item)
                offsets[(item.topic, item.partition)] = item.offset + 1
            self.producer.send_offsets_to_transaction(
                [TopicPartition(t, p, o) for (t, p), o in offsets.items()], group_metadata
            )
            self.producer.commit_transaction()
        except KafkaException as exc:
            # Abortable or fatal (fenced): nothing of this batch is visible to read_committed readers and its
            # offsets are not committed; stop and let the group redeliver rather than guess.
            raise Unrecoverable(f"transaction failed: {exc}") from exc
        self.poll(0)
        for item in items:
            item.acked = True
        return offsets

    def poll(self, timeout_s: float = 0.0) -> int:
        return int(self.producer.poll(timeout_s))

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding deliveries; returns how many are still unacknowledged."""
        return int(self.producer.flush(timeout_s))
