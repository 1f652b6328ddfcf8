"""Kafka connectivity and consumer lag for /health and metrics, from librdkafka's stats and error callbacks."""

from __future__ import annotations

import json
import logging
import time

from confluent_kafka import KafkaError

from processor.telemetry.health import Health
from processor.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

ERROR_LOG_EVERY_S = 30.0


class KafkaStats:
    """Callbacks run inside poll/consume on the consumer thread; `assigned` is the loop's live assignment set."""

    def __init__(self, health: Health, metrics: Metrics, assigned: set[tuple[str, int]]) -> None:
        self.health = health
        self.metrics = metrics
        self.assigned = assigned
        self._lag_series: set[tuple[str, int]] = set()  # partitions with a lag gauge, removed on revoke
        self._error_logged: dict[int, float] = {}

    def on_stats(self, raw: str) -> None:
        """Read librdkafka statistics (every statistics.interval.ms): broker state and per-partition consumer_lag."""
        stats = json.loads(raw)
        brokers = stats.get("brokers", {}).values()
        self.health.kafka_connected = any(b.get("state") == "UP" and b.get("nodeid", -1) >= 0 for b in brokers)
        total = 0
        for topic, tdata in stats.get("topics", {}).items():
            for pid, pdata in tdata.get("partitions", {}).items():
                lag = pdata.get("consumer_lag", -1)
                if int(pid) < 0 or (topic, int(pid)) not in self.assigned or lag is None or lag < 0:
                    continue
                self.metrics.consumer_lag.labels(topic=topic, partition=pid).set(lag)
                self._lag_series.add((topic, int(pid)))
                total += lag
        self.health.lag = total if self.assigned else 0

    def on_error(self, err: KafkaError) -> None:
        """Record a librdkafka error for /health (error callback); logged at most every 30 s per code.

        The reason goes to /health's `kafka.last_error`. "All brokers down" follows every refused connection, so
        it does not hide a reason already kept (`_AUTHENTICATION` for a wrong SASL password, `_SSL` for an
        untrusted certificate).
        """
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.health.kafka_connected = False
        if err.code() != KafkaError._ALL_BROKERS_DOWN or self.health.kafka_last_error is None:
            self.health.kafka_last_error = f"{err.name()}: {err.str()}"
        # librdkafka reports every reconnect attempt while a broker is down; say it once per error code
        # per ERROR_LOG_EVERY_S at WARNING and the repeats at DEBUG, so an outage does not flood the log.
        now = time.monotonic()
        repeat = now - self._error_logged.get(err.code(), -ERROR_LOG_EVERY_S) < ERROR_LOG_EVERY_S
        if not repeat:
            self._error_logged[err.code()] = now
        level = logging.DEBUG if repeat else logging.WARNING
        log.log(level, "kafka error", extra={"error": str(err), "code": err.name()})

    def forget(self, tps: set[tuple[str, int]]) -> None:
        """Drop the lag series of partitions no longer owned (a revoked partition must not report stale lag)."""
        for topic, partition in tps & self._lag_series:
            self.metrics.consumer_lag.remove(topic, str(partition))
        self._lag_series -= tps
