"""Test-side helpers: run the real processor as a subprocess, and read its output topics."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from devtools.broker import EMBEDDED_CLIENT_ENV, free_port
from devtools.runner import ProcessorProcess, metric_samples, processor_env  # noqa: F401 (shared with the bench)

# Tansu joins groups in ~half of session.timeout.ms; keep it short for every processor a test starts.
FAST_GROUP = EMBEDDED_CLIENT_ENV


class ProcessorProc(ProcessorProcess):
    """The shared runner plus what only tests ask of it: JSON bodies, signals, a shorter start-up wait."""

    @property
    def port(self) -> int:
        return self.http_port

    def get_json(self, path: str) -> tuple[int, Any]:
        status, body = self.get(path)
        return status, json.loads(body)

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        # Tests load small models, so a hung start fails sooner than the bench's allowance for large ones.
        super().wait_ready(timeout_s)

    def signal(self, sig: int) -> None:
        """Send `sig` by PID while the child runs (SIGHUP reloads the model, SIGTERM starts a drain)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)


def new_processor(env: dict[str, str], log_dir: Path, name: str = "processor") -> ProcessorProc:
    port = free_port()
    env = dict(env, DFP_HTTP_PORT=str(port))
    return ProcessorProc(env=env, log_path=log_dir / f"{name}-{port}.log", http_port=port)


def read_topics(bootstrap: str, topics: list[str], partitions: int, expected: int, timeout_s: float = 60.0,
                settle_s: float = 0.0) -> list[Message]:  # fmt: skip
    """Read from offset 0 of every partition (assign, no group) until `expected` messages or the deadline.

    With settle_s > 0 keep reading that long after reaching `expected`, to catch extras (duplicates).
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader-unused", "enable.auto.commit": False,
                         "enable.partition.eof": False})  # fmt: skip
    consumer.assign([TopicPartition(t, p, 0) for t in topics for p in range(partitions)])
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            if settle_until is None and len(got) >= expected:
                if settle_s <= 0:
                    break
                settle_until = time.monotonic() + settle_s
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            for msg in consumer.consume(500, 0.2):
                if msg.error() is None:
                    got.append(msg)
    finally:
        consumer.close()
    return got


def headers_of(msg: Message) -> dict[str, str]:
    return {k: v.decode("utf-8", errors="replace") for k, v in (msg.headers() or [])}


# --- fault-injection helpers (tests/integration/test_reliability.py and friends) ------------------------------


def image_event(event_id: str, image: bytes, **fields: Any) -> bytes:
    """A JSON input envelope carrying `image` as base64."""
    return json.dumps({"event_id": event_id, "image_b64": base64.b64encode(image).decode("ascii"), **fields}).encode()


def produce_values(bootstrap: str, topic: str, values: list[bytes], *, partitions: int = 1,
                   headers: list[list[tuple[str, bytes]] | None] | None = None) -> dict[int, int]:  # fmt: skip
    """Produce values round-robin over `partitions` (in order within each); return end offsets per partition.

    The end offsets come from the delivery reports (last offset + 1), so they are right even where the
    broker's watermarks are not (Tansu).
    """
    ends: dict[int, int] = {}
    errors: list[str] = []

    def delivered(err: Any, msg: Message) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            partition = msg.partition() or 0
            ends[partition] = max(ends.get(partition, 0), (msg.offset() or 0) + 1)

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                         "message.max.bytes": 64 * 1024 * 1024})  # fmt: skip
    for i, value in enumerate(values):
        hdrs = headers[i] if headers is not None else None
        while True:
            try:
                producer.produce(topic, value, key=f"k{i}".encode(), partition=i % partitions,
                                 headers=hdrs, on_delivery=delivered)  # type: ignore[arg-type]  # fmt: skip
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(60)
    assert left == 0 and not errors, f"produce failed: {left} unsent, errors {errors[:3]}"
    return ends


def event_id_of(msg: Message) -> str:
    """The `event_id` header of a result or dead letter ("" when absent)."""
    return headers_of(msg).get("event_id", "")


def read_until_ids(bootstrap: str, topics: list[str], partitions: int, ids: set[str], *, timeout_s: float = 60.0,
                   settle_s: float = 0.0, config: dict[str, Any] | None = None) -> list[Message]:  # fmt: skip
    """Read every partition of `topics` from offset 0 (no group) until every id in `ids` was seen, or the deadline.

    `settle_s` keeps reading that long afterwards to catch duplicates; `config` adds consumer settings
    (e.g. {"isolation.level": "read_uncommitted"}; librdkafka's default is read_committed).
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader-unused", "enable.auto.commit": False,
                         "enable.partition.eof": False, **(config or {})})  # fmt: skip
    consumer.assign([TopicPartition(t, p, 0) for t in topics for p in range(partitions)])
    got: list[Message] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline and (settle_until is None or time.monotonic() < settle_until):
            for msg in consumer.consume(500, 0.2):
                if msg.error() is None:
                    got.append(msg)
                    seen.add(event_id_of(msg))
            if settle_until is None and ids <= seen:
                settle_until = time.monotonic() + settle_s
    finally:
        consumer.close()
    return got


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition (-1001 = none), read with Consumer.committed()."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=15)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def wait_for(condition: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    """Poll `condition()` until it returns something truthy (returned) or fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB."""
    return float(psutil.Process(pid).memory_info().rss) / (1024 * 1024)


class Sampler:
    """Calls `probe()` every `interval_s` on a named thread until stopped; keeps every value (errors skipped)."""

    def __init__(self, probe: Any, interval_s: float = 0.05, name: str = "sampler") -> None:
        self.values: list[Any] = []
        self._probe = probe
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            # A probe racing a dying process or a busy HTTP server: skip that sample.
            with contextlib.suppress(Exception):
                self.values.append(self._probe())
            self._stop.wait(self._interval_s)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


# --- steady load and a live view of the outputs (rebalance and exactly-once tests) ---------------------------


class SteadyProducer:
    """Produces `batch` events every `interval_s` over `partitions` on a named thread until stopped.

    `ends` holds each partition's end offset (from delivery reports) after every batch, so a test can note where
    the input stood when it changed the group. Keys are `k<i % partitions>`-style per partition, so one key always
    maps to one input partition (and to one output partition).
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int, image: bytes, *, prefix: str = "ev",
                 batch: int = 12, interval_s: float = 0.2) -> None:  # fmt: skip
        self.bootstrap, self.topic, self.partitions, self.image = bootstrap, topic, partitions, image
        self.prefix, self.batch, self.interval_s = prefix, batch, interval_s
        self.ids: list[str] = []
        self.ends: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-producer", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = [f"{self.prefix}-{len(self.ids) + i}" for i in range(self.batch)]
            ends = produce_values(self.bootstrap, self.topic, [image_event(e, self.image) for e in batch],
                                  partitions=self.partitions)  # fmt: skip
            self.ids.extend(batch)
            for partition, end in ends.items():
                self.ends[partition] = max(self.ends.get(partition, 0), end)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> SteadyProducer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


@dataclass(frozen=True, slots=True)
class Seen:
    """One output record as the watcher read it."""

    at: float  # time.monotonic() when read
    event_id: str
    key: bytes | None
    topic: str
    partition: int  # output partition
    source_partition: int
    source_offset: int


class OutputWatcher:
    """Reads `topics` from offset 0 (no group, read_committed by default) on a named thread, recording each output.

    Answers what the rebalance and exactly-once tests ask: duplicates, per-key input-offset order, and how soon
    outputs for inputs produced after a moment appeared on every partition (time to resume).
    """

    def __init__(self, bootstrap: str, topics: list[str], partitions: int, config: dict[str, Any] | None = None):
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        base = {"bootstrap.servers": bootstrap, "group.id": "watcher-unused", "enable.auto.commit": False}
        self._consumer = Consumer({**base, **(config or {})})
        self._consumer.assign([TopicPartition(t, p, 0) for t in topics for p in range(partitions)])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="output-watcher", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(500, 0.1):
                if msg.error() is None:
                    record = self._record(msg)
                    with self._lock:
                        self.seen.append(record)

    @staticmethod
    def _record(msg: Message) -> Seen:
        h = headers_of(msg)
        if "source.offset" in h:  # a dead letter
            partition, offset = int(h["source.partition"]), int(h["source.offset"])
        else:
            source = json.loads(msg.value() or b"{}").get("source", {})
            partition, offset = int(source.get("partition", -1)), int(source.get("offset", -1))
        return Seen(time.monotonic(), h.get("event_id", ""), msg.key(), msg.topic() or "", msg.partition() or 0,
                    partition, offset)  # fmt: skip

    def snapshot(self) -> list[Seen]:
        """Everything read so far."""
        with self._lock:
            return list(self.seen)

    def ids(self) -> set[str]:
        """The event ids read so far."""
        return {s.event_id for s in self.snapshot()}

    def duplicates(self) -> int:
        """Outputs beyond the first for their event id."""
        counts = Counter(s.event_id for s in self.snapshot())
        return sum(c - 1 for c in counts.values())

    def out_of_order_keys(self) -> list[bytes | None]:
        """Keys whose outputs (in read order, per output partition) did not follow their input offsets."""
        last: dict[tuple[str, int, bytes | None], int] = {}
        bad = []
        for s in self.snapshot():
            k = (s.topic, s.partition, s.key)
            if s.source_offset <= last.get(k, -1):
                bad.append(s.key)
            last[k] = s.source_offset
        return bad

    def resumed_after(self, t0: float, ends: dict[int, int]) -> float | None:
        """Seconds from `t0` until every input partition had an output for an input at or after `ends` (else None)."""
        first: dict[int, float] = {}
        for s in self.snapshot():
            if s.source_offset >= ends.get(s.source_partition, 0) and s.source_partition not in first:
                first[s.source_partition] = s.at
        if set(first) != set(ends):
            return None
        return max(first.values()) - t0

    def __enter__(self) -> OutputWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def run_bench(tmp_path: Path, *extra: str) -> tuple[dict[str, Any], str]:
    """`deepfake-processor bench --quick` into tmp_path: (the result JSON, the Markdown file it updated).

    The Markdown starts with hand-written text around an old generated section, to show it is kept.
    """
    from processor.cli import main

    out, md = tmp_path / "bench.json", tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nAnalysis written by hand.\n\n<!-- bench:vit-tiny:begin -->\nold\n"
                  "<!-- bench:vit-tiny:end -->\n\nMore analysis.\n")  # fmt: skip
    code = main(["bench", "--quick", "--no-progress", "--json", str(out), "--markdown", str(md),
                 "--plot-dir", str(tmp_path / "img"), *extra])  # fmt: skip
    assert code == 0
    return json.loads(out.read_text()), md.read_text()
