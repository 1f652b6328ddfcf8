"""A stop signal that lands while the main thread is writing a log record leaves every line a whole record.

Python runs a signal handler on the main thread between two bytecodes, possibly inside that thread's own
log write (librdkafka's log callback from `producer.poll`). A CI run caught the processor's SIGTERM handler
logging from there: the stream refused the nested write ("reentrant call inside <_io.BufferedWriter>") and
stderr got a `--- Logging error ---` banner instead of the JSON record.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator

import pytest

from processor.app import Processor
from processor.settings import load_settings

pytestmark = pytest.mark.usefixtures("no_dfp_env")


class ReentrancyCheckingStream:
    """Refuses a write nested in another, as a BufferedWriter does; the first write delivers a signal mid-way."""

    def __init__(self, on_first_write: object) -> None:
        self.lines: list[str] = []
        self._busy = False
        self._on_first_write = on_first_write

    def write(self, text: str) -> None:
        if self._busy:
            raise RuntimeError("reentrant call inside <ReentrancyCheckingStream>")
        self._busy = True
        try:
            handler, self._on_first_write = self._on_first_write, None
            if callable(handler):
                handler()  # the signal arrives here, half-way through this write
            self.lines.append(text)
        finally:
            self._busy = False

    def flush(self) -> None:
        return None


@pytest.fixture
def processor() -> Iterator[Processor]:
    proc = Processor(load_settings({"bootstrap_servers": "127.0.0.1:9", "http_host": "127.0.0.1", "http_port": 0}))
    yield proc
    proc.http.stop()  # never started: closes its bound socket


def test_sigterm_during_a_log_write_is_logged_as_a_record_of_its_own(
    processor: Processor, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = ReentrancyCheckingStream(lambda: processor.request_stop(signal.SIGTERM, None))
    handler = logging.StreamHandler(stream)  # type: ignore[arg-type]
    logger = logging.getLogger("processor.app")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        logger.info("a record being written when the signal lands")
        for thread in [t for t in threading.enumerate() if t.name == "signal-log"]:
            thread.join(5.0)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert stream.lines == ["a record being written when the signal lands\n", "signal received: draining\n"]
    assert "Logging error" not in capsys.readouterr().err
    assert processor._stop_early  # the stop itself was not deferred
