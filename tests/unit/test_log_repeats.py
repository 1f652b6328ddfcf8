"""librdkafka's per-reconnect log lines are rate-limited; the processor's own lines never are."""

from __future__ import annotations

import logging

from processor.logs import RepeatFilter


def _record(name: str, msg: str, created: float) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.ERROR, __file__, 1, msg, None, None)
    record.created = created
    return record


def test_repeated_librdkafka_failures_pass_once_per_window() -> None:
    repeats = RepeatFilter(every_s=10.0)
    fail = "FAIL [deepfake-processor#consumer-2] [thrd:127.0.0.1:9092/bootstrap]: Connect failed (after {}ms)"
    passed = [repeats.filter(_record("librdkafka.consumer", fail.format(t), float(t))) for t in range(0, 25)]
    assert passed.count(True) == 3  # t = 0, 10, 20


def test_processor_logs_are_never_filtered() -> None:
    repeats = RepeatFilter(every_s=10.0)
    assert all(repeats.filter(_record("processor.consumer", "kafka error", 1.0)) for _ in range(5))
