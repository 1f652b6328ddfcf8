"""Size refusals never crash-loop: a refused outcome is resent alone, then as a cut dead letter, and its event
stays unacknowledged (its offset uncommitted) until a copy is delivered."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from processor.errors import ImageDecodeFailed, Unrecoverable
from processor.inflight import InFlight, Outcome
from processor.offsets import OffsetTracker
from processor.outcomes import TRUNCATED_PAYLOAD_BYTES, dead_letter_outcome
from processor.publish import Publisher
from processor.telemetry.metrics import Metrics
from tests.procs import metric_samples

TOO_LARGE = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)


class FakeMessage:
    """What a delivery callback reads from a message."""

    def __init__(self, topic: str) -> None:
        self._topic = topic

    def topic(self) -> str:
        """The topic the message was for."""
        return self._topic


class FakeProducer:
    """Queues produce() calls; `poll`/`flush` deliver them, refusing values over `limit` bytes (per topic)."""

    def __init__(self, limits: dict[str, int]) -> None:
        self.limits = limits
        self.queued: list[tuple[str, bytes, list[tuple[str, bytes]], Callable[..., None]]] = []
        self.delivered: list[tuple[str, bytes, dict[str, bytes]]] = []

    def produce(self, topic: str, value: bytes, key: Any, headers: Any, on_delivery: Callable[..., None]) -> None:
        """Queue one message (delivered by `poll`)."""
        self.queued.append((topic, value, headers, on_delivery))

    def poll(self, timeout: float = 0.0) -> int:
        """Deliver (or refuse for size) everything queued, calling each delivery callback."""
        queued, self.queued = self.queued, []
        for topic, value, headers, callback in queued:
            if len(value) > self.limits.get(topic, 1 << 30):
                callback(TOO_LARGE, FakeMessage(topic))
            else:
                self.delivered.append((topic, value, dict(headers)))
                callback(None, FakeMessage(topic))
        return len(queued)

    def flush(self, timeout: float = 0.0) -> int:
        """Poll until nothing is queued (callbacks may queue more)."""
        while self.queued:
            self.poll()
        return 0


def _publisher(limits: dict[str, int], metrics: Metrics) -> tuple[Publisher, FakeProducer, list[InFlight]]:
    acked: list[InFlight] = []
    publisher = Publisher({"bootstrap.servers": "127.0.0.1:1"}, acked.append, metrics, dlq_topic="dlq")
    fake = FakeProducer(limits)
    publisher.producer = fake  # type: ignore[assignment]
    publisher._limits = {"out": None, "dlq": None}  # no broker to describe: exercise the delivery-report path
    return publisher, fake, acked


def _event(tracker: OffsetTracker, offset: int, value: bytes, outcome_topic: str) -> InFlight:
    item = InFlight(topic="in", partition=0, offset=offset, key=b"k", value=value, headers=None, timestamp_ms=None)
    tracker.admit(item)
    if outcome_topic == "dlq":
        item.error = ImageDecodeFailed("not an image")
        item.outcome = dead_letter_outcome(item, item.error, "dlq")
    else:
        item.outcome = Outcome(topic="out", value=b"r" * 100, headers=[("event_id", b"e")])
    return item


def _truncated(metrics: Metrics) -> float:
    from prometheus_client import generate_latest

    return sum(metric_samples(generate_latest(metrics.registry).decode(), "deepfake_payload_truncated_total"))


def test_dead_letter_refused_by_the_broker_is_resent_cut_and_its_offset_waits_for_the_copy() -> None:
    metrics = Metrics()
    publisher, fake, _ = _publisher({"dlq": 100_000}, metrics)
    tracker = OffsetTracker()
    big = b"\x00" + bytes(range(256)) * 1200  # ~300 KB
    first, second = _event(tracker, 0, big, "dlq"), _event(tracker, 1, b"ok", "out")
    for item in tracker.releasable():
        publisher.produce(item)
    fake.poll()  # the dead letter is refused, the later result is delivered
    assert not first.acked and second.acked
    assert tracker.committable() == {}  # offset 1 is acknowledged but 0 is not: nothing to commit yet
    publisher.poll()  # resent once alone (refused again), then cut
    assert first.acked and tracker.committable() == {("in", 0): 2}
    topic, value, headers = fake.delivered[-1]
    assert topic == "dlq" and value == big[:TRUNCATED_PAYLOAD_BYTES]
    assert headers["payload.truncated"] == b"true" and headers["payload.original_size"] == str(len(big)).encode()
    assert headers["payload.sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert headers["error.code"] == b"image_decode_failed"
    assert _truncated(metrics) == 1 and publisher.fatal is None


def test_result_refused_for_size_becomes_a_result_too_large_dead_letter() -> None:
    metrics = Metrics()
    publisher, fake, _ = _publisher({"out": 50}, metrics)
    tracker = OffsetTracker()
    item = _event(tracker, 0, b"original input", "out")
    publisher.produce(next(tracker.releasable()))
    publisher.poll()
    assert item.acked
    topic, value, headers = fake.delivered[-1]
    assert (topic, value) == ("dlq", b"original input")
    assert headers["error.code"] == b"result_too_large" and headers["payload.truncated"] == b"false"


def test_small_result_refused_only_with_its_batch_is_resent_unchanged() -> None:
    metrics = Metrics()
    publisher, fake, _ = _publisher({}, metrics)
    tracker = OffsetTracker()
    item = _event(tracker, 0, b"input", "out")
    publisher.produce(next(tracker.releasable()))
    fake.queued[0][3](TOO_LARGE, FakeMessage("out"))  # refused as part of a batch that was too large
    fake.queued.clear()
    publisher.poll()
    assert item.acked and fake.delivered[-1][0] == "out" and _truncated(metrics) == 0


def test_cut_copy_refused_too_is_fatal_and_never_acknowledged() -> None:
    publisher, _fake, _ = _publisher({"dlq": 10}, Metrics())
    tracker = OffsetTracker()
    item = _event(tracker, 0, b"x" * 1000, "dlq")
    publisher.produce(next(tracker.releasable()))
    publisher.poll()
    assert isinstance(publisher.fatal, Unrecoverable) and not item.acked
    assert tracker.committable() == {}


def test_local_size_refusal_from_produce_is_cut_in_place_in_order() -> None:
    metrics = Metrics()
    publisher, fake, _ = _publisher({}, metrics)
    refuse_once = [True]
    produce = fake.produce

    def refusing(topic: str, value: bytes, key: Any, headers: Any, on_delivery: Callable[..., None]) -> None:
        if refuse_once and len(value) > TRUNCATED_PAYLOAD_BYTES:
            refuse_once.clear()
            raise KafkaException(TOO_LARGE)
        produce(topic, value, key, headers, on_delivery)

    fake.produce = refusing  # type: ignore[method-assign]
    tracker = OffsetTracker()
    first, second = _event(tracker, 0, b"y" * 200_000, "dlq"), _event(tracker, 1, b"ok", "out")
    for item in tracker.releasable():
        publisher.produce(item)
    assert [q[0] for q in fake.queued] == ["dlq", "out"]  # the cut copy keeps its place
    fake.poll()
    assert first.acked and second.acked and _truncated(metrics) == 1


@pytest.mark.parametrize("code", [KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE])
def test_both_broker_size_codes_count_as_size_refusals(code: int) -> None:
    from processor.publish import refused_for_size

    assert refused_for_size(KafkaError(code))
    assert not refused_for_size(KafkaError(KafkaError._MSG_TIMED_OUT))
