"""Logs: JSON lines (default) and text carry topic/partition/offset/event_id/error.code; dead letters log at DEBUG."""

from __future__ import annotations

import json
import logging
import queue

import pytest

from processor.errors import ImageDecodeFailed
from processor.inflight import InFlight
from processor.logs import JsonFormatter, TextFormatter, setup_logging
from processor.outcomes import Outcomes
from processor.telemetry.metrics import Metrics

FIELDS = {"topic": "images.uploaded", "partition": 3, "offset": 42, "event_id": "e-7", "error.code": "invalid_json"}


def record(level: int = logging.DEBUG, msg: str = "dead letter") -> logging.LogRecord:
    logger = logging.getLogger("processor.test")
    return logger.makeRecord(logger.name, level, __file__, 1, msg, (), None, extra=dict(FIELDS))


def test_json_lines_carry_the_structured_fields_as_keys() -> None:
    doc = json.loads(JsonFormatter().format(record()))
    assert {k: doc[k] for k in FIELDS} == FIELDS
    assert (doc["level"], doc["msg"], doc["logger"]) == ("DEBUG", "dead letter", "processor.test")
    assert doc["ts"].endswith("Z")


def test_text_lines_carry_the_structured_fields_as_key_value_pairs() -> None:
    line = TextFormatter().format(record())
    assert "DEBUG" in line and "dead letter" in line
    for key, value in FIELDS.items():
        assert f"{key}={value}" in line


def test_json_is_the_default_format_and_text_is_the_option() -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        setup_logging("INFO")
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        setup_logging("DEBUG", "text")
        assert isinstance(root.handlers[0].formatter, TextFormatter) and root.level == logging.DEBUG
    finally:
        root.handlers[:], root.level = saved, level


@pytest.fixture
def outcomes() -> Outcomes:
    return Outcomes("out", "dlq", Metrics(), queue.SimpleQueue())


def test_each_dead_letter_logs_one_debug_line_with_its_fields_and_nothing_at_info(
    outcomes: Outcomes, caplog: pytest.LogCaptureFixture
) -> None:
    for offset in (5, 6):
        item = InFlight(
            topic="in",
            partition=1,
            offset=offset,
            key=None,
            value=b"x",
            headers=None,
            timestamp_ms=None,
            event_id=f"e-{offset}",
        )
        item.error = ImageDecodeFailed("not an image")
        with caplog.at_level(logging.DEBUG, logger="processor.outcomes"):
            outcomes.decide(item)
    lines = [r for r in caplog.records if r.name == "processor.outcomes"]
    assert [r.levelno for r in lines] == [logging.DEBUG, logging.DEBUG]
    doc = json.loads(JsonFormatter().format(lines[1]))
    assert {k: doc[k] for k in ("topic", "partition", "offset", "event_id", "error.code")} == {
        "topic": "in",
        "partition": 1,
        "offset": 6,
        "event_id": "e-6",
        "error.code": "image_decode_failed",
    }
    assert (
        outcomes.metrics.registry.get_sample_value(
            "deepfake_events_dead_lettered_total", {"code": "image_decode_failed"}
        )
        == 2.0
    )


def test_dead_letters_log_nothing_when_the_level_is_info(outcomes: Outcomes, caplog: pytest.LogCaptureFixture) -> None:
    item = InFlight(topic="in", partition=0, offset=1, key=None, value=b"", headers=None, timestamp_ms=None)
    item.error = ImageDecodeFailed("not an image")
    with caplog.at_level(logging.INFO, logger="processor.outcomes"):
        outcomes.decide(item)
    assert not [r for r in caplog.records if r.name == "processor.outcomes"]


def test_the_log_stream_lives_with_the_process_and_is_never_reported_as_an_unclosed_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every test run and every processor used to end with "ResourceWarning: unclosed file" for this stream.
    import gc
    import warnings

    from processor import logs

    monkeypatch.setattr(logs, "_stream", None)
    stream = logs._log_stream()
    monkeypatch.setattr(logs, "_stream", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del stream
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
