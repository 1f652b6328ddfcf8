"""Consumer loop policies: poll timeout, offset-commit failures, and the librdkafka config it builds."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from processor.consumer import BUSY_POLL_S, MAX_BUSY_POLL_S, StreamLoop, busy_poll_s, consumer_config
from processor.inflight import InFlight, Outcome
from processor.offsets import OffsetTracker
from processor.settings import load_settings
from processor.telemetry.metrics import Metrics
from tests.procs import metric_samples


@pytest.mark.parametrize(
    ("batch_seconds", "expected"),
    [
        (0.0, BUSY_POLL_S),  # nothing scored yet: poll as often as before
        (0.005, BUSY_POLL_S),  # a fast model (vit-tiny, a GPU): every 2 ms
        (0.2, 0.01),  # 5 % of a 200 ms batch
        (4.0, MAX_BUSY_POLL_S),  # ViT-B/16 on a CPU: at most 20 ms, whatever the batch takes
    ],
)
def test_poll_timeout_adds_at_most_a_twentieth_of_a_batch_and_stays_within_2_to_20_ms(
    batch_seconds: float, expected: float
) -> None:
    assert busy_poll_s(batch_seconds) == pytest.approx(expected)


def _loop_with_committed_offset(offset: int) -> SimpleNamespace:
    """The parts of a StreamLoop `_on_commit` touches, with offset `offset` of images[0] committed (async)."""
    tracker = OffsetTracker()
    for o in range(offset):
        item = InFlight(topic="images", partition=0, offset=o, key=None, value=b"", headers=None, timestamp_ms=None)
        tracker.admit(item)
        item.outcome = Outcome(topic="out", value=b"", headers=[])
    for item in tracker.releasable():
        item.acked = True
    tracker.mark_committed(tracker.committable())
    return SimpleNamespace(tracker=tracker, metrics=Metrics())


def _failures(loop: SimpleNamespace) -> float:
    from prometheus_client import generate_latest

    return sum(metric_samples(generate_latest(loop.metrics.registry).decode(), "deepfake_commit_failures_total"))


def test_async_commit_failure_is_counted_and_the_offsets_are_resent_on_the_next_commit() -> None:
    loop = _loop_with_committed_offset(3)
    assert loop.tracker.committable() == {}
    # A TopicPartition's `error` is read-only from Python; the callback only reads these four attributes.
    failed = SimpleNamespace(topic="images", partition=0, offset=3, error=KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
    StreamLoop._on_commit(loop, None, [failed])  # type: ignore[arg-type]
    assert _failures(loop) == 1
    assert loop.tracker.committable() == {("images", 0): 3}


def test_whole_commit_request_failure_resends_every_partition_in_it() -> None:
    loop = _loop_with_committed_offset(2)
    StreamLoop._on_commit(loop, KafkaError(KafkaError._TRANSPORT), [TopicPartition("images", 0, 2)])  # type: ignore[arg-type]
    assert _failures(loop) == 1 and loop.tracker.committable() == {("images", 0): 2}


def test_nothing_to_commit_is_not_a_failure() -> None:
    loop = _loop_with_committed_offset(2)
    StreamLoop._on_commit(loop, KafkaError(KafkaError._NO_OFFSET), [])  # type: ignore[arg-type]
    assert _failures(loop) == 0 and loop.tracker.committable() == {}


def _noop(*_: object) -> None:
    return None


def test_kip848_consumer_protocol_drops_the_settings_librdkafka_rejects(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings({"kafka": {"group.protocol": "consumer", "session.timeout.ms": "6000",
                                        "heartbeat.interval.ms": "500"}})  # fmt: skip
    with caplog.at_level(logging.INFO, logger="processor.consumer"):
        config = consumer_config(settings, _noop, _noop, _noop)
    assert config["group.protocol"] == "consumer"
    assert not {"session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"} & set(config)
    assert "classic-protocol" in caplog.text


def test_classic_protocol_keeps_cooperative_sticky_and_the_passthrough() -> None:
    settings = load_settings({"kafka": {"session.timeout.ms": "6000"}})
    config = consumer_config(settings, _noop, _noop, _noop)
    assert config["partition.assignment.strategy"] == "cooperative-sticky"
    assert config["session.timeout.ms"] == "6000"


class _StaleGenerationProducer:
    """A transactional producer whose first send_offsets_to_transaction fails as after a rebalance."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.stale = True

    def begin_transaction(self) -> None:
        """Start a transaction."""
        self.calls.append("begin")

    def produce(self, topic: str, value: bytes, key: object, headers: object, on_delivery: object) -> None:
        """Record the produce."""
        self.calls.append(f"produce {topic}")

    def send_offsets_to_transaction(self, offsets: object, metadata: object) -> None:
        """Refuse the first time (stale generation), accept afterwards."""
        if self.stale:
            self.stale = False
            raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION, "stale generation", txn_requires_abort=True))
        self.calls.append("offsets")

    def commit_transaction(self) -> None:
        """Commit."""
        self.calls.append("commit")

    def abort_transaction(self, timeout: float) -> None:
        """Abort."""
        self.calls.append("abort")

    def poll(self, timeout: float = 0.0) -> int:
        """No delivery reports to serve."""
        return 0


def test_transaction_aborted_by_a_rebalance_is_released_again_not_fatal() -> None:
    from processor.publish import Publisher

    publisher = Publisher({"bootstrap.servers": "127.0.0.1:1"}, lambda item: None, Metrics())
    fake = _StaleGenerationProducer()
    publisher.producer = fake  # type: ignore[assignment]
    publisher._transactional = True
    tracker = OffsetTracker()
    for offset in range(3):
        item = InFlight(topic="images", partition=0, offset=offset, key=None, value=b"", headers=None,
                        timestamp_ms=None)  # fmt: skip
        item.outcome = Outcome(topic="out", value=b"r", headers=[])
        tracker.admit(item)
    loop = SimpleNamespace(tracker=tracker, publisher=publisher, metrics=Metrics(), _aborted_since=None,
                           consumer=SimpleNamespace(consumer_group_metadata=lambda: "metadata"))  # fmt: skip
    loop._transaction_aborted = lambda exc, n: StreamLoop._transaction_aborted(loop, exc, n)  # type: ignore[arg-type]
    StreamLoop._produce_transaction(loop)  # type: ignore[arg-type]
    assert fake.calls[-1] == "abort" and len(tracker) == 3 and tracker.committable() == {}
    StreamLoop._produce_transaction(loop)  # type: ignore[arg-type]  # the next iteration: fresh metadata
    assert fake.calls[-2:] == ["offsets", "commit"]
    assert fake.calls.count("produce out") == 6  # the same three events, once per transaction
    assert len(tracker) == 0 and loop._aborted_since is None
