"""Publish stage: the idempotent (or transactional) producer that sends each decided outcome and records its ack.

A result or dead letter a topic refuses for size is sent again as a dead letter with its payload cut (never a
crash loop); the event stays unacknowledged until that copy is delivered, so its offset is never committed early.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from processor.errors import ResultTooLarge, TransactionAborted, Unrecoverable
from processor.inflight import InFlight, Outcome
from processor.outcomes import TRUNCATED_PAYLOAD_BYTES, truncated_dead_letter_outcome
from processor.telemetry.metrics import Metrics

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


#: Longest a size-refusal retry waits for deliveries (it runs rarely, on the loop thread).
SIZE_RETRY_FLUSH_S = 10.0
#: librdkafka's refusals for size: local (`produce()` raises) and the broker's (topic `max.message.bytes`).
_SIZE_CODES = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})


def refused_for_size(err: KafkaError) -> bool:
    """Whether a produce error means "this message is too large" (retrying it unchanged can never work)."""
    return err.code() in _SIZE_CODES or err.name() == "_MSG_SIZE_TOO_LARGE"


#: Bytes a record adds around key, value and headers in its batch (batch header, varints); generous.
RECORD_OVERHEAD_BYTES = 512
_TOO_LARGE = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)


def _record_size(item: InFlight, outcome: Outcome) -> int:
    """An upper bound of the outcome's size as the broker counts it against `max.message.bytes`."""
    headers = sum(len(k) + len(v) for k, v in outcome.headers)
    return len(outcome.value) + len(item.key or b"") + headers + RECORD_OVERHEAD_BYTES


def producer_config(
    bootstrap: str, passthrough: dict[str, str], max_message_bytes: int, transactional_id: str | None
) -> dict[str, Any]:
    """The librdkafka producer config: idempotent, acks=all, uncompressed by default, DFP_KAFKA_* on top.

    Args:
        bootstrap: `bootstrap.servers`.
        passthrough: DFP_KAFKA_* properties (consumer-only keys are left out).
        max_message_bytes: The producer's `message.max.bytes` (above the largest input accepted).
        transactional_id: Set for exactly-once delivery.

    Returns:
        The config dict for `confluent_kafka.Producer`.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,  # no duplicates or reordering from producer retries
        "acks": "all",
        # Uncompressed unless DFP_KAFKA_COMPRESSION_TYPE says otherwise: every client library reads it without codecs.
        "compression.type": "none",
        "linger.ms": 5,  # pipelines many small results into one request without adding visible latency
        # Any consumed event must fit back out verbatim as a dead letter (docs/EVENTS.md).
        "message.max.bytes": max_message_bytes,
        "client.id": "deepfake-processor",
        "logger": logging.getLogger("librdkafka.producer"),
    }
    if transactional_id:
        config["transactional.id"] = transactional_id
    config.update({k: v for k, v in passthrough.items() if not k.startswith(CONSUMER_ONLY_PREFIXES)})
    return config


class Publisher:
    """Produces outcomes; the delivery callback marks events acknowledged (it runs inside `poll`, on our thread).

    Args:
        config: The producer config (`producer_config`).
        on_ack: Called with each event whose outcome the broker acknowledged.
        metrics: Counts failed deliveries, truncated payloads and `result_too_large` dead letters.
        dlq_topic: Where refused-for-size outcomes go again, cut; None turns a size refusal into a fatal error.
    """

    def __init__(
        self,
        config: dict[str, Any],
        on_ack: Callable[[InFlight], None],
        metrics: Metrics,
        *,
        dlq_topic: str | None = None,
    ) -> None:
        self.producer = Producer(config)
        self._on_ack = on_ack
        self._dlq_topic = dlq_topic
        self._metrics = metrics
        self._transactional = bool(config.get("transactional.id"))
        self._refused: list[tuple[InFlight, str]] = []  # refused for size by (topic); handled by `poll`
        # id(event) -> size step: 1 = resent unchanged in a batch of its own, 2 = resent as the cut dead letter.
        self._size_step: dict[int, int] = {}
        self._config = config
        self._limits: dict[str, int | None] = {}  # topic -> max.message.bytes (`_topic_limit`)
        self.fatal: Unrecoverable | None = None

    def produce(self, item: InFlight) -> None:
        """Send the event's outcome; a local size refusal is replaced by the cut dead letter right here, in order."""
        outcome = item.outcome
        assert outcome is not None
        item.produced_at = time.monotonic()
        while True:
            limit = self._topic_limit(outcome.topic)
            if limit is not None and _record_size(item, outcome) > limit:
                # Known in advance: cut now rather than have the broker refuse it (under exactly-once a refusal
                # aborts the transaction, and librdkafka's sequence numbers may not survive it).
                outcome = self._next_size_step(item, outcome.topic, _TOO_LARGE, alone=True)
                continue
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
            except KafkaException as exc:
                if not refused_for_size(exc.args[0]):
                    raise
                # Refused on its own by our message.max.bytes: no need to try it alone first.
                outcome = self._next_size_step(item, outcome.topic, exc.args[0], alone=True)

    def _next_size_step(self, item: InFlight, topic: str, err: KafkaError, *, alone: bool = False) -> Outcome:
        """After a size refusal: first resend unchanged in a batch of its own, then cut; a refused cut is fatal.

        The broker's `max.message.bytes` limits a whole record batch, so a small result batched with a large one is
        refused with it: only a refusal of the message alone (`alone`, or the second one) says it is too large.
        """
        step = max(self._size_step.get(id(item), 0) + 1, 2 if alone else 1)
        if self._dlq_topic is None or step > 2:
            self.fatal = self.fatal or Unrecoverable(f"{topic} refused offset {item.offset} for size, even cut: {err}")
            raise self.fatal
        self._size_step[id(item)] = step
        assert item.outcome is not None
        return item.outcome if step == 1 else self._cut_outcome(item, topic, err)

    def _topic_limit(self, topic: str) -> int | None:
        """The topic's `max.message.bytes`, read once per topic (None when it cannot be read: rely on refusals)."""
        if topic in self._limits:
            return self._limits[topic]
        limit = None
        if self._dlq_topic is not None:
            try:
                admin = AdminClient({k: v for k, v in self._config.items() if k != "transactional.id"})
                futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)], request_timeout=5)
                for future in futures.values():
                    limit = int(future.result(timeout=5)["max.message.bytes"].value)
            except (KafkaException, KeyError, ValueError, TimeoutError) as exc:
                # A broker that does not report topic configs (the embedded one) is no reason to warn.
                level = logging.INFO if isinstance(exc, KeyError) else logging.WARNING
                log.log(level, "cannot read the topic's max.message.bytes; relying on the broker's refusals",
                        extra={"topic": topic, "error": str(exc)})  # fmt: skip
        self._limits[topic] = limit
        return limit

    def _cut_outcome(self, item: InFlight, topic: str, err: KafkaError) -> Outcome:
        """Replace a refused outcome by its dead letter with the payload cut, and count it."""
        assert item.outcome is not None and self._dlq_topic is not None
        if item.outcome.topic != self._dlq_topic or item.error is None:
            item.error = ResultTooLarge(f"result refused by {topic} for size ({len(item.outcome.value)} bytes): {err}")
        cut = truncated_dead_letter_outcome(item, item.error, self._dlq_topic, TRUNCATED_PAYLOAD_BYTES)
        item.outcome = cut
        self._metrics.payload_truncated.labels(topic=topic).inc()
        if cut.code == ResultTooLarge.code:
            self._metrics.dead_lettered.labels(code=cut.code).inc()
        log.warning(
            "outcome refused for size; dead-lettering it with the payload cut",
            extra={"topic": item.topic, "partition": item.partition, "offset": item.offset,
                   "event_id": item.event_id, "refused_by": topic, "error.code": item.error.code,
                   "original_size": len(item.value), "error": str(err)},
        )  # fmt: skip
        return cut

    def _callback(self, item: InFlight) -> Callable[[KafkaError | None, Message], None]:
        return lambda err, msg: self._delivered(item, err, msg)

    def _delivered(self, item: InFlight, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self._size_step.pop(id(item), None)
            item.acked = True
            self._on_ack(item)
            return
        topic = msg.topic() or "?"
        if refused_for_size(err) and self._dlq_topic is not None and self._size_step.get(id(item), 0) < 2:
            # Not acknowledged: the event's offset stays uncommitted until a resent copy is delivered (`poll`).
            self._refused.append((item, topic))
            return
        if self._transactional:
            # The transaction fails as a whole (commit_transaction raises) and nothing of it is committed.
            log.debug("delivery failed inside a transaction", extra={"offset": item.offset, "error": str(err)})
            return
        # librdkafka already retried (idempotent producer); a failure here is final for this message.
        # Its offset must never be committed: record the first one and stop the loop.
        self._metrics.produce_errors.labels(topic=topic).inc()
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

    def _resend_refused(self) -> None:
        """Resend outcomes the broker refused for size (at-least-once), each alone in its batch, unchanged then cut.

        Rare, so it may block: a flush first lets the refused ones' batch-mates report, and a flush after each
        resend keeps it alone in its batch, so the broker's answer is about that message only. An event's other
        outputs may meanwhile overtake it on other topics, but its offset (and every later one of its partition)
        stays uncommitted until the resent copy is acknowledged.
        """
        self.producer.flush(SIZE_RETRY_FLUSH_S)
        while self._refused:
            item, topic = self._refused.pop(0)
            try:
                self._next_size_step(item, topic, _TOO_LARGE)
            except Unrecoverable as exc:
                self.fatal = self.fatal or exc
                return
            self.produce(item)
            self.producer.flush(SIZE_RETRY_FLUSH_S)

    def produce_transaction(self, items: list[InFlight], group_metadata: Any) -> dict[tuple[str, int], int]:
        """Exactly-once: the items' outputs and their input offsets commit atomically, or nothing does.

        Returns the committed offsets (offset + 1 per partition). The items are released in offset order,
        so each partition's last item is its new commit point. When the broker refused some outcome for size,
        the transaction is aborted and run again: those outcomes first unchanged, each alone in its batch, then cut
        (`_next_size_step`).
        """
        offsets: dict[tuple[str, int], int] = {}
        for _attempt in range(3):
            try:
                self.producer.begin_transaction()
                for item in items:
                    alone = id(item) in self._size_step
                    if alone:
                        self.producer.flush(SIZE_RETRY_FLUSH_S)
                    self.produce(item)
                    if alone:
                        self.producer.flush(SIZE_RETRY_FLUSH_S)
                    offsets[(item.topic, item.partition)] = item.offset + 1
                self.producer.send_offsets_to_transaction(
                    [TopicPartition(t, p, o) for (t, p), o in offsets.items()], group_metadata
                )
                self.producer.commit_transaction()
                break
            except KafkaException as exc:
                # Nothing of this batch is visible to read_committed readers and its offsets are not committed.
                # Fatal (fenced, or the abort fails): stop. Abortable: refusals for size are retried here; anything
                # else (a rebalance made the group generation stale) goes back to the loop to release again.
                refused = self._abort(exc)
                for item in items:
                    item.acked = False
                if not refused:
                    raise TransactionAborted(f"transaction aborted: {exc}") from exc
                for item, topic in refused:
                    self._next_size_step(item, topic, _TOO_LARGE)
        else:
            raise Unrecoverable("transaction failed: outcomes refused for size even cut")
        self.poll(0)
        for item in items:
            item.acked = True
        return offsets

    def _abort(self, exc: KafkaException) -> list[tuple[InFlight, str]]:
        """Abort the failed transaction; return its outcomes the broker refused for size. Unrecoverable if fatal."""
        if exc.args[0].fatal():
            raise Unrecoverable(f"transaction failed: {exc}") from exc
        try:
            self.producer.abort_transaction(30)
        except KafkaException as abort_exc:
            raise Unrecoverable(f"transaction failed: {exc}; abort failed: {abort_exc}") from exc
        self.producer.poll(0)  # the aborted messages' delivery reports say which ones were refused for size
        refused, self._refused = self._refused, []
        return refused

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery reports (acks, failures), then resend any outcome refused for size, cut."""
        served = int(self.producer.poll(timeout_s))
        if self._refused and not self._transactional:
            self._resend_refused()
        return served

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding deliveries (and cut resends); returns how many are still unacknowledged."""
        deadline = time.monotonic() + timeout_s
        left = int(self.producer.flush(timeout_s))
        while self._refused and self.fatal is None and time.monotonic() < deadline:
            self._resend_refused()
            left = int(self.producer.flush(max(0.0, deadline - time.monotonic())))
        return left
