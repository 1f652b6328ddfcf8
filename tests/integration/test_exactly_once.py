"""Exactly-once (DFP_DELIVERY=exactly-once) on real Apache Kafka: a crash mid-stream shows nothing twice downstream.

Tansu returns aborted records to read_committed readers, so this guarantee can only be shown on real Kafka.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from tests.brokers import Cluster, TopicFactory
from tests.corpus import jpeg_bytes
from tests.integration.conftest import ProcessorFactory
from tests.procs import event_id_of, image_event, metric_samples, processor_env, produce_values, read_until_ids

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_exactly_once_kill9_mid_stream_read_committed_reader_sees_each_event_once(
    apache_kafka: Cluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory
) -> None:
    n, partitions = 300, 3
    bootstrap = apache_kafka.bootstrap
    inp, out, dlq = (topic_factory(bootstrap, partitions, prefix) for prefix in ("in", "out", "dlq"))
    ids = {f"eos-{i}" for i in range(n)}
    values = [image_event(f"eos-{i}", jpeg_bytes(64, 64)) for i in range(n)]
    values[7] = b'{"event_id": "eos-7", "not": "an image"}'  # dead letters ride in the same transactions
    headers: list[list[tuple[str, bytes]] | None] = [None] * n
    headers[7] = [("event_id", b"eos-7")]  # invalid_schema: the dead letter's id comes from this header
    produce_values(bootstrap, inp, values, partitions=partitions, headers=headers)
    # One stable transactional.id for both instances: B's init_transactions fences A and aborts A's open transaction.
    env = processor_env(bootstrap, inp, out, dlq, group_id, DELIVERY="exactly-once",
                        TRANSACTIONAL_ID=f"tx-{group_id}", MAX_IN_FLIGHT="64")  # fmt: skip
    first = processor_factory(env, name="eos-a")

    peak_in_flight = 0.0

    def decided() -> float:
        nonlocal peak_in_flight
        text = first.get("/metrics")[1].decode()
        peak_in_flight = max(peak_in_flight, *metric_samples(text, "deepfake_in_flight_events"))
        return sum(metric_samples(text, "deepfake_events_scored_total")) + sum(
            metric_samples(text, "deepfake_events_dead_lettered_total")
        )

    deadline = time.monotonic() + 60
    while decided() < n // 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    first.stop(signal.SIGKILL)
    assert 0 < peak_in_flight <= 64, f"deepfake_in_flight_events peaked at {peak_in_flight} in exactly-once mode"
    second = processor_factory(env, name="eos-b")

    committed = read_until_ids(bootstrap, [out, dlq], partitions, ids, timeout_s=120, settle_s=2.0)
    uncommitted = read_until_ids(bootstrap, [out, dlq], partitions, ids, timeout_s=30, settle_s=1.0,
                                 config={"isolation.level": "read_uncommitted"})  # fmt: skip
    seen = Counter(event_id_of(m) for m in committed)
    raw = Counter(event_id_of(m) for m in uncommitted)
    lost, twice = ids - set(seen), {e: c for e, c in seen.items() if c > 1}
    print(f"\nFIGURE exactly-once: events={n} read_committed={len(committed)} (lost={len(lost)} "
          f"duplicated={len(twice)}) read_uncommitted={len(uncommitted)} "
          f"(extra={sum(raw.values()) - len(raw)}: records of the aborted transaction) "
          f"peak_in_flight={peak_in_flight:.0f}")  # fmt: skip
    assert not lost, f"{len(lost)} events missing, e.g. {sorted(lost)[:5]}\n{second.log_tail()}"
    assert not twice, f"seen more than once by read_committed: {dict(list(twice.items())[:5])}"
    assert len(committed) == n
    assert sum(1 for m in committed if m.topic() == dlq) == 1
    assert len(uncommitted) >= len(committed)
    assert second.stop() == 0
