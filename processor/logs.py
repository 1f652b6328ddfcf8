"""Structured logging: JSON lines by default (one object per record with its context fields), text for humans.

Native libraries (ONNX Runtime) print straight to file descriptors 1 and 2 while providers load;
`native_output_captured` catches those writes for a while and `emit_native` turns them into records, so a
process that logs JSON writes nothing but JSON.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

# Attributes every LogRecord has; anything else came in through `extra=` and is context worth printing.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, then every `extra=` field as its own key."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (values json cannot encode are written with str())."""
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_context(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """Time, level, logger and message, then the `extra=` fields as key=value pairs: for humans."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The record as one text line."""
        base = super().format(record)
        ctx = " ".join(f"{k}={v}" for k, v in _context(record).items())
        return f"{base} {ctx}" if ctx else base


class RepeatFilter(logging.Filter):
    """Lets one record per key through every `every_s` (librdkafka logs each reconnect attempt of an outage)."""

    def __init__(self, every_s: float = 10.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a librdkafka record whose facility and client already passed within `every_s`."""
        if not record.name.startswith("librdkafka"):
            return True
        # librdkafka messages start "FAC [client#type-n] [thrd:...]": facility + client identify a repeat.
        key = record.name + record.getMessage().split("]", 1)[0]
        last = self._last.get(key)
        if last is not None and record.created - last < self.every_s:
            return False
        self._last[key] = record.created
        return True


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send every record to stderr as one JSON object per line (`fmt="json"`) or as text (`"text"`).

    The handler writes through its own duplicate of fd 2, so records logged while `native_output_captured`
    has fd 2 redirected still reach stderr directly instead of being captured and re-wrapped.

    Args:
        level: the root logger's level name.
        fmt: "json" or "text".
    """
    handler = logging.StreamHandler(_log_stream())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def configured() -> bool:
    """True once `setup_logging` installed the service's handler (so errors go out in its format)."""
    return any(isinstance(h.formatter, JsonFormatter | TextFormatter) for h in logging.getLogger().handlers)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# ONNX Runtime's default sink: "2026-11-30 13:10:09.52 [E:onnxruntime:Default, file.cc:123 func] message".
_ORT_LINE = re.compile(r"^\S+ \S+ \[([VIWEF]):onnxruntime:[^,\]]*,? ?([^\]]*)\] ?(.*)$")
_ORT_LEVELS = {"V": logging.DEBUG, "I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
_CAPTURE_LOCK = threading.Lock()
_stream: IO[str] | None = None


def _log_stream() -> IO[str]:
    """A line-buffered stream on a duplicate of fd 2, made once per process (sys.stderr if it has no fd)."""
    global _stream
    if _stream is None:
        try:
            # Lives as long as the process: closefd=False, so interpreter exit neither closes it under a late
            # log record nor warns about an "unclosed file" (the OS closes the descriptor).
            fd = os.dup(sys.stderr.fileno())
            _stream = os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        except (AttributeError, OSError, ValueError):  # stderr replaced by an object without a descriptor
            return sys.stderr
    return _stream


@dataclass(frozen=True, slots=True)
class NativeLine:
    """One line a native library printed while captured: where, how severe, and its text without colour codes."""

    stream: str  # "stdout" or "stderr"
    level: int  # a logging level; untagged lines count as warnings (EP error banners, DLL load failures)
    text: str
    source: str = ""  # ORT's "file.cc:line function", when the line carries it


def parse_native(stream: str, raw: str) -> list[NativeLine]:
    """Split captured output into lines, dropping blanks and ORT's `*****` banner rules.

    Args:
        stream: "stdout" or "stderr", recorded on each line.
        raw: the captured text.

    Returns:
        One NativeLine per meaningful line, in order.
    """
    lines = []
    for line in _ANSI.sub("", raw).splitlines():
        text = line.strip()
        if not text.strip("*").strip():
            continue
        match = _ORT_LINE.match(text)
        if match:
            lines.append(NativeLine(stream, _ORT_LEVELS[match[1]], match[3].strip(), match[2].strip()))
        else:
            lines.append(NativeLine(stream, logging.WARNING, text))
    return lines


@contextmanager
def native_output_captured() -> Iterator[list[NativeLine]]:
    """Redirect fds 1 and 2 to temporary files for the block; the yielded list holds their lines afterwards.

    Temporary files rather than pipes: a library that prints more than a pipe holds would block on a pipe
    nobody reads until the block ends. One capture at a time per process (a lock), since fds are global.
    """
    lines: list[NativeLine] = []
    with _CAPTURE_LOCK, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        _flush_python_streams()
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        sinks = {1: out, 2: err}
        python_streams = sys.stdout, sys.stderr
        try:
            for fd, sink in sinks.items():
                os.dup2(sink.fileno(), fd)
            # Python-level prints (onnxruntime.preload_dlls) too, even where sys.stdout is not fd 1 (a test runner).
            sys.stdout, sys.stderr = (open(fd, "w", closefd=False, encoding="utf-8") for fd in (1, 2))  # noqa: SIM115
            yield lines
        finally:
            for stream in (sys.stdout, sys.stderr):
                if stream not in python_streams:
                    stream.close()  # flushes; closefd=False leaves fds 1 and 2 open
            sys.stdout, sys.stderr = python_streams
            _flush_python_streams()
            for fd, sink in sinks.items():
                os.dup2(saved[fd], fd)
                os.close(saved[fd])
                sink.seek(0)
                lines.extend(parse_native("stdout" if fd == 1 else "stderr", sink.read().decode(errors="replace")))


def emit_native(lines: list[NativeLine], logger: logging.Logger) -> None:
    """Log each captured native line as one record at its own level, with its stream and source as fields.

    Args:
        lines: what `native_output_captured` collected.
        logger: the logger to emit on (e.g. `logging.getLogger("onnxruntime")`).
    """
    for line in lines:
        logger.log(line.level, line.text, extra={"stream": line.stream, "source": line.source or None})


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):  # closed or replaced: nothing to lose
            stream.flush()
