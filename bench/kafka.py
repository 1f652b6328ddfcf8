"""Kafka-side bench helpers: read outputs and input timestamps back, and the naive one-at-a-time baseline.

The baseline is the seed's design rebuilt from the processor's own classes: poll one message, decode it at
full resolution, infer it as a batch of one, produce the result, wait for the broker's ack, commit
synchronously, repeat.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from bench.inproc import StageRun, limits_of
from processor.app import load_engine
from processor.decode import Decoder, Preprocessor
from processor.engine import Engine
from processor.errors import ProcessorError
from processor.imageinfo import ImageInfo
from processor.inflight import Headers, InFlight, Outcome
from processor.outcomes import dead_letter_outcome, result_outcome
from processor.publish import producer_config
from processor.settings import MiB, Settings
from schemas import FaceBox

FIRST_MESSAGE_TIMEOUT_S = 60.0


def reader(bootstrap: str, topics: Iterable[str], partitions: int, start: dict[int, int] | None = None) -> Consumer:
    """A group-less consumer assigned to every partition of `topics` (from `start[p]`, else offset 0)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "enable.partition.eof": False})  # fmt: skip
    starts = start or {}
    consumer.assign([TopicPartition(t, p, starts.get(p, 0)) for t in topics for p in range(partitions)])
    return consumer


@dataclass(frozen=True, slots=True)
class Output:
    """One result or dead letter as the bench needs it."""

    event_id: str
    timestamp_ms: int  # the output message's Kafka timestamp
    first_poll_ms: float | None  # processed_at − timings_ms.total (results only)
    partition: int  # of the input event
    offset: int
    timings_ms: dict[str, float] | None
    dead_letter: bool


def _header_pairs(msg: Message) -> Headers:
    """The message's headers as (name, bytes) pairs, whatever shape the client returns them in."""
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [(k, v.encode() if isinstance(v, str) else bytes(v or b"")) for k, v in pairs]


def parse_output(msg: Message) -> Output:
    """A result or dead letter as the bench needs it: id, Kafka timestamp, source position, timings."""
    headers = {k: v.decode("utf-8", errors="replace") for k, v in _header_pairs(msg)}
    ts = msg.timestamp()[1]
    if "error.code" in headers:
        return Output(headers.get("event_id", ""), ts, None, int(headers["source.partition"]),
                      int(headers["source.offset"]), None, True)  # fmt: skip
    doc = json.loads(msg.value() or b"{}")
    processed = datetime.fromisoformat(doc["processed_at"].replace("Z", "+00:00")).timestamp() * 1000.0
    timings = doc["timings_ms"]
    return Output(doc["event_id"], ts, processed - timings["total"], doc["source"]["partition"],
                  doc["source"]["offset"], timings, False)  # fmt: skip


class OutputCollector:
    """Reads the output and dead-letter topics from the start and keeps every output, by event-id prefix."""

    def __init__(self, bootstrap: str, topics: Iterable[str], partitions: int) -> None:
        self._consumer = reader(bootstrap, topics, partitions)
        self.outputs: list[Output] = []

    def pump(self, timeout_s: float = 0.2) -> int:
        """Read what has arrived (waiting up to `timeout_s`); returns how many outputs were new."""
        messages = [m for m in self._consumer.consume(1000, timeout_s) if m.error() is None]
        self.outputs.extend(parse_output(m) for m in messages)
        return len(messages)

    def with_prefix(self, prefix: str) -> list[Output]:
        """One output per event id starting with `prefix` (an at-least-once duplicate counts once)."""
        first: dict[str, Output] = {}
        for output in self.outputs:
            if output.event_id.startswith(prefix):
                first.setdefault(output.event_id, output)
        return list(first.values())

    def close(self) -> None:
        """Close the reader's consumer."""
        self._consumer.close()


def input_timestamps(bootstrap: str, topic: str, partitions: int, wanted: set[tuple[int, int]],
                     timeout_s: float = 60.0) -> dict[tuple[int, int], int]:  # fmt: skip
    """Kafka timestamps of the input messages at `wanted` (partition, offset) positions."""
    starts: dict[int, int] = {}
    for p, o in wanted:
        starts[p] = min(o, starts.get(p, o))
    consumer = reader(bootstrap, [topic], partitions, {p: starts.get(p, 0) for p in range(partitions)})
    found: dict[tuple[int, int], int] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < len(wanted) and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error() is None and (msg.partition(), msg.offset()) in wanted:
                    found[(msg.partition() or 0, msg.offset() or 0)] = msg.timestamp()[1]
    finally:
        consumer.close()
    return found


class FullResolutionDecoder(Decoder):
    """The seed's decode: always full resolution, never JPEG DCT scaling (1/2, 1/4, 1/8)."""

    def _reduction(self, info: ImageInfo, faces: list[FaceBox] | None) -> int:
        return 1


class NaiveBaseline:
    """The seed's loop: everything synchronous on the consumer thread, one message at a time."""

    def __init__(self, settings: Settings, output_topic: str, dlq_topic: str) -> None:
        self.engine: Engine = load_engine(settings)
        pre = Preprocessor(self.engine.model.preprocess)
        self.engine.warm_up(pre.shape)
        # The seed decoded at full resolution (no JPEG DCT scaling); so does the baseline.
        self.decoder = FullResolutionDecoder(pre, limits_of(settings), None)
        self.output_topic, self.dlq_topic = output_topic, dlq_topic
        self.producer = Producer(producer_config(settings.bootstrap_servers, {}, 64 * MiB, None))
        self.consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "bench-baseline",
                                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})  # fmt: skip

    def run(self, topic: str, partitions: int, max_events: int, seconds: float) -> StageRun:
        """Process up to `max_events` or for `seconds` (timed from the first message) and return the rate."""
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        started: float | None = None
        finished, cpu = 0.0, time.process_time()
        done, wait_until = 0, time.monotonic() + FIRST_MESSAGE_TIMEOUT_S
        try:
            while done < max_events and time.monotonic() < wait_until:
                msg = self.consumer.poll(0.5)
                if msg is None or msg.error() is not None:
                    continue
                started = started or time.monotonic()
                self._handle(msg)
                done, finished = done + 1, time.monotonic()
                wait_until = min(started + seconds, time.monotonic() + 5.0)
        finally:
            self.consumer.close()
            self.producer.flush(10)
        if started is None:
            raise RuntimeError(f"baseline: no message arrived on {topic} in {FIRST_MESSAGE_TIMEOUT_S:.0f} s")
        return StageRun(done, finished - started, cpu_s=time.process_time() - cpu)

    def _handle(self, msg: Message) -> None:
        ts_type, ts = msg.timestamp()
        item = InFlight(topic=msg.topic() or "", partition=msg.partition() or 0, offset=msg.offset() or 0,
                        key=msg.key(), value=msg.value() or b"", headers=_header_pairs(msg) or None,
                        timestamp_ms=ts if ts_type else None)  # fmt: skip
        outcome = self._score(item)
        self.producer.produce(outcome.topic, value=outcome.value, key=item.key, headers=list(outcome.headers))
        self.producer.flush(30)  # wait for the ack before committing: at-least-once, one message at a time
        self.consumer.commit(message=msg, asynchronous=False)

    def _score(self, item: InFlight) -> Outcome:
        try:
            self.decoder.decode(item)
            assert item.crops is not None
            item.probs = self.engine.infer(item.crops)
            item.scored_by = self.engine
        except ProcessorError as exc:
            return dead_letter_outcome(item, exc, self.dlq_topic)
        return result_outcome(item, self.output_topic)
