"""The consumer loop: poll → admit → (decode, batch, score elsewhere) → produce in order → commit acked prefix."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from processor.decode import DecodePool
from processor.errors import TransactionAborted, Unrecoverable
from processor.inflight import InFlight
from processor.offsets import OffsetTracker
from processor.outcomes import Decided
from processor.publish import Publisher
from processor.settings import Delivery, Settings, redact
from processor.telemetry.health import Health
from processor.telemetry.kafka_stats import KafkaStats
from processor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.1
BUSY_POLL_S = 0.002
MAX_BUSY_POLL_S = 0.02
RELEASE_SHARE = 0.05  # of a batch's inference time, the most waiting for the loop to wake may add
MAX_CONSUME = 500
REVOKE_DRAIN_S = 10.0
PRESSURE_COMMIT_S = 0.02
ABORTED_TRANSACTIONS_GIVE_UP_S = 60.0  # a rebalance settles in seconds; aborting for longer is not a rebalance


def busy_poll_s(batch_seconds: float) -> float:
    """How long `poll` may block while events are in flight.

    Scored events are produced when this loop wakes, and confluent-kafka cannot wake a blocked poll from
    another thread, so the timeout is latency added to every result. Scale it with the batches' own length:
    2 ms for a fast model (or before any batch ran), up to 20 ms for ViT-B/16 on a CPU (0.5 s a batch),
    where 500 wake-ups a second would only burn a core's 3 %.
    """
    return min(MAX_BUSY_POLL_S, max(BUSY_POLL_S, RELEASE_SHARE * batch_seconds))


#: Classic-protocol settings that `group.protocol=consumer` (KIP-848) moves to the broker; librdkafka refuses them.
CLASSIC_GROUP_ONLY = ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy")


def consumer_config(
    settings: Settings,
    on_stats: Callable[[str], None],
    on_error: Callable[[KafkaError], None],
    on_commit: Callable[[KafkaError | None, list[TopicPartition]], None],
) -> dict[str, Any]:
    """The librdkafka consumer config: manual offset store and commits, our callbacks, then DFP_KAFKA_* on top.

    Args:
        settings: The processor's settings (bootstrap, group, delivery mode, librdkafka passthrough).
        on_stats: librdkafka statistics callback.
        on_error: librdkafka error callback.
        on_commit: Offset-commit result callback.

    Returns:
        The config dict for `confluent_kafka.Consumer`.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": settings.group_id,
        # We commit explicitly, and only offsets whose output the broker acknowledged.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "statistics.interval.ms": 2000,  # consumer lag and broker state for /health and metrics
        "stats_cb": on_stats,
        "error_cb": on_error,
        "on_commit": on_commit,
        "client.id": "deepfake-processor",
        # librdkafka's own log lines go through our logging (JSON or text), not raw to stderr.
        "logger": logging.getLogger("librdkafka.consumer"),
    }
    if settings.delivery is Delivery.EXACTLY_ONCE:
        config["isolation.level"] = "read_committed"
    config.update(settings.kafka)
    if str(config.get("group.protocol", "classic")).lower() == "consumer":
        # KIP-848: the broker owns session timeout, heartbeats and assignment; librdkafka rejects these keys.
        dropped = [key for key in CLASSIC_GROUP_ONLY if config.pop(key, None) is not None]
        if dropped:
            log.info("group.protocol=consumer: not passing classic-protocol settings", extra={"dropped": dropped})
    return config


class StreamLoop:
    """Runs on the main thread and owns the Consumer, the tracker and the Publisher (none are touched elsewhere)."""

    def __init__(
        self,
        settings: Settings,
        decode: DecodePool,
        decided: Decided,
        publisher: Publisher,
        metrics: Metrics,
        health: Health,
        batch_seconds: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.settings = settings
        self.batch_seconds = batch_seconds  # the scorer's recent inference time per batch
        self.decode = decode
        self.publisher = publisher
        self.metrics = metrics
        self.health = health
        self.tracker = OffsetTracker()
        self.stop_requested = threading.Event()
        self.fatal: BaseException | None = None
        self.decided = decided  # filled by processor.outcomes on worker threads; a wake-up, see _produce_decided
        self._assigned: set[tuple[str, int]] = set()
        self.kafka_stats = KafkaStats(health, metrics, self._assigned)
        self._paused = False
        self._last_commit = time.monotonic()
        self._eos = settings.delivery is Delivery.EXACTLY_ONCE
        self._aborted_since: float | None = None  # exactly-once: when the current run of aborted transactions began
        config = consumer_config(settings, self.kafka_stats.on_stats, self._on_error, self._on_commit)
        shown = {k: v for k, v in redact(config).items() if not callable(v) and not isinstance(v, logging.Logger)}
        log.info("consumer settings", extra={"kafka": shown})
        self.consumer = Consumer(config)
        for topic in settings.input_topic:  # series exist from start, so "no events while lagging" alerts can fire
            metrics.consumed.labels(topic=topic)

    # ---- the loop -------------------------------------------------------------------------------------------

    def run(self, extra_fatal: Callable[[], BaseException | None]) -> None:
        """Loop until a stop is requested or something fatal happens (then raise it)."""
        self.consumer.subscribe(
            self.settings.input_topic, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        while not self.stop_requested.is_set():
            self.publisher.poll(0)  # delivery reports → acknowledged events
            self._admit(self._poll())  # hand new events to the decode pool
            self._produce_decided()  # produce decided outcomes in offset order
            self._backpressure()
            if self._commit_due():
                self.commit(asynchronous=True)
            self._raise_fatal(extra_fatal())

    def _commit_due(self) -> bool:
        """Every COMMIT_INTERVAL_MS, and sooner when in-flight passes half of MAX_IN_FLIGHT.

        In-flight counts events until their offset is committed (that is what bounds duplicates after a
        crash), so waiting a whole interval would cap throughput at MAX_IN_FLIGHT per interval.
        """
        elapsed = time.monotonic() - self._last_commit
        if elapsed >= self.settings.commit_interval_ms / 1000.0:
            return True
        return elapsed >= PRESSURE_COMMIT_S and len(self.tracker) >= self.settings.max_in_flight // 2

    def _poll(self) -> list[Message]:
        budget = min(MAX_CONSUME, self.settings.max_in_flight - len(self.tracker))
        if budget <= 0:
            # Paused: keep polling so rebalance callbacks and max.poll.interval.ms stay served. A message
            # fetched before the pause may still come back; it is admitted, never dropped.
            msg = self.consumer.poll(0)
            if msg is None:
                time.sleep(BUSY_POLL_S)
                return []
            return [msg]
        timeout = busy_poll_s(self.batch_seconds()) if len(self.tracker) else IDLE_POLL_S
        if not self.decided.empty():
            timeout = 0.0
        first = self.consumer.poll(timeout)
        if first is None:
            return []
        rest = self.consumer.consume(budget - 1, 0) if budget > 1 else []
        return [first, *rest]

    def _admit(self, messages: list[Message]) -> None:
        if not messages:
            return
        per_topic: Counter[str] = Counter()
        for msg in messages:
            err = msg.error()
            if err is not None:
                self._consume_error(err)
                continue
            ts_type, ts = msg.timestamp()
            item = InFlight(
                topic=msg.topic() or "",
                partition=msg.partition() or 0,
                offset=msg.offset() or 0,
                key=msg.key(),
                value=msg.value() or b"",
                headers=msg.headers(),  # type: ignore[arg-type]
                timestamp_ms=ts if ts_type != 0 else None,
            )
            self.tracker.admit(item)
            per_topic[item.topic] += 1
            self.decode.submit(item)
        for topic, n in per_topic.items():
            self.metrics.consumed.labels(topic=topic).inc(n)
        self.health.kafka_connected = True

    def _produce_decided(self) -> None:
        """Produce every decided outcome whose turn has come (offset order per partition).

        `decided` only tells this thread that outcomes were set; the order comes from the tracker, which
        releases an event once it and every earlier offset of its partition have an outcome.
        """
        while True:
            try:
                self.decided.get_nowait()
            except queue.Empty:
                break
        if self._eos:
            self._produce_transaction()
        else:
            for item in self.tracker.releasable():
                self.publisher.produce(item)
        self.metrics.in_flight.set(len(self.tracker))

    def _produce_transaction(self) -> None:
        items = list(self.tracker.releasable())
        if not items:
            return
        try:
            offsets = self.publisher.produce_transaction(items, self.consumer.consumer_group_metadata())
        except TransactionAborted as exc:
            self._transaction_aborted(exc, len(items))
            return
        self._aborted_since = None
        self.tracker.advance()
        self.tracker.mark_committed(offsets)
        self.metrics.commits.inc()

    def _transaction_aborted(self, exc: TransactionAborted, events: int) -> None:
        """Re-queue an aborted transaction's events for the next transaction.

        The next loop iterations (after poll() has served the rebalance, dropping revoked partitions) release
        them again with fresh group metadata.
        """
        self.tracker.unrelease()
        now = time.monotonic()
        first = self._aborted_since is None
        self._aborted_since = self._aborted_since or now
        if now - self._aborted_since > ABORTED_TRANSACTIONS_GIVE_UP_S:
            raise Unrecoverable(f"transactions kept aborting for {ABORTED_TRANSACTIONS_GIVE_UP_S:.0f} s: {exc}")
        log.log(logging.WARNING if first else logging.DEBUG, "transaction aborted; its events go out again",
                extra={"error": str(exc), "events": events})  # fmt: skip

    # ---- commit, backpressure, fatal ---------------------------------------------------------------------------

    def commit(self, *, asynchronous: bool, only: set[tuple[str, int]] | None = None) -> None:
        """Commit each owned partition's acknowledged contiguous prefix (offset + 1, Kafka's convention)."""
        self._last_commit = time.monotonic()
        if self._eos:
            return  # offsets travel inside each transaction
        offsets = {tp: o for tp, o in self.tracker.committable().items() if only is None or tp in only}
        if not offsets:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            if asynchronous:
                self.consumer.commit(offsets=tps, asynchronous=True)
            else:
                self.consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            log.warning("offset commit failed; will retry", extra={"error": str(exc)})
            return
        self.tracker.mark_committed(offsets)
        self.metrics.commits.inc()

    def _backpressure(self) -> None:
        in_flight = len(self.tracker)
        if not self._paused and in_flight >= self.settings.max_in_flight:
            self._set_paused(True)
        elif self._paused and in_flight <= self.settings.max_in_flight // 2:
            self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        assignment = self.consumer.assignment()
        if assignment:
            (self.consumer.pause if paused else self.consumer.resume)(assignment)
        self._paused = paused
        self.metrics.paused.set(1 if paused else 0)
        log.info("consumer %s", "paused" if paused else "resumed", extra={"in_flight": len(self.tracker)})

    def _raise_fatal(self, extra: BaseException | None) -> None:
        fatal = self.fatal or self.publisher.fatal or extra
        if fatal is not None:
            raise fatal

    def _consume_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = Unrecoverable(f"fatal consumer error: {err}")
        log.warning("consume error", extra={"error": str(err)})

    # ---- librdkafka callbacks (all run inside poll/consume on this thread) --------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.tracker.assign((tp.topic, tp.partition))
            self._assigned.add((tp.topic, tp.partition))
        self._update_assignment_health()
        log.info("partitions assigned", extra={"partitions": _names(partitions)})
        if self._paused and partitions:
            # New partitions join paused; librdkafka applies the pause once the assignment is in place.
            consumer.incremental_assign(partitions)
            consumer.pause(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        if not self._eos:
            self._drain(revoked, REVOKE_DRAIN_S)
            self.commit(asynchronous=False, only=revoked)
        self._forget(revoked, "revoked")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost (session expired): someone else may own them already, so commit nothing for them.
        self._forget({(tp.topic, tp.partition) for tp in partitions}, "lost")

    def _forget(self, tps: set[tuple[str, int]], why: str) -> None:
        dropped = sum(len(self.tracker.revoke(tp)) for tp in tps)
        self._assigned -= tps
        self._update_assignment_health()
        self.kafka_stats.forget(tps)
        log.info(
            "partitions %s",
            why,
            extra={"partitions": sorted(f"{t}[{p}]" for t, p in tps), "dropped_in_flight": dropped},
        )

    def _update_assignment_health(self) -> None:
        self.health.joined_group = True
        self.health.assigned_partitions = len(self._assigned)
        self.metrics.assigned.set(len(self._assigned))

    def _drain(self, tps: set[tuple[str, int]] | None, budget_s: float) -> int:
        """Finish in-flight events (of `tps`, or all): release, produce, collect acks. Returns what is left."""
        deadline = time.monotonic() + budget_s
        while self.tracker.pending(tps) and time.monotonic() < deadline:
            self._produce_decided()
            self.publisher.poll(0.01)
            self.tracker.advance()
            if self.publisher.fatal is not None:
                break
        return self.tracker.pending(tps)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = Unrecoverable(f"fatal Kafka error: {err}")
        self.kafka_stats.on_error(err)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None and err.code() == KafkaError._NO_OFFSET:
            return  # nothing was due: not a failure
        failed = list(partitions) if err is not None else [tp for tp in partitions if tp.error is not None]
        if not failed:
            return
        # The commit was marked sent when issued (asynchronous): un-mark it so the next commit sends it again.
        self.tracker.commit_failed({(tp.topic, tp.partition): tp.offset for tp in failed})
        self.metrics.commit_failures.inc()
        log.warning(
            "offset commit failed; will resend",
            extra={"error": str(err or failed[0].error), "partitions": _names(failed)},
        )

    # ---- shutdown -----------------------------------------------------------------------------------------------

    def shutdown(self, budget_s: float) -> int:
        """Stop consuming, finish and deliver in-flight work, commit, leave the group. Returns events left over."""
        self.health.stopping = True
        left = 0
        if self.fatal is None and self.publisher.fatal is None:
            left = self._drain(None, budget_s * 0.8)
            self.publisher.flush(max(0.1, budget_s * 0.1))
            self.publisher.poll(0)
        self.tracker.advance()
        if not self._eos:
            self.commit(asynchronous=False)
        self.consumer.close()  # leaves the group now instead of after session.timeout.ms
        if left:
            log.warning("shutdown budget spent; events left for redelivery", extra={"left": left})
        return left


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{tp.topic}[{tp.partition}]" for tp in partitions]
