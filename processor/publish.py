"""Publish stage: the idempotent (or transactional) producer that sends each decided outcome and records its ack."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from processor.errors import Unrecoverable
from processor.inflight import InFlight

log = logging.getLogger(__name__)


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
