"""Exactly-once (DFP_DELIVERY=exactly-once) on real Apache Kafka: crashes and stops show nothing twice downstream.

Tansu returns aborted records to read_committed readers, so these guarantees can only be shown on real Kafka.
Every instance uses the default transactional.id (GROUP_ID-hostname-random): unique per instance, which KIP-447
makes safe because offsets travel with the consumer group metadata, so fencing follows the group generation.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from tests.brokers import Cluster, TopicFactory
from tests.corpus import jpeg_bytes
from tests.integration.conftest import ProcessorFactory
from tests.procs import (
    ProcessorProc,
    event_id_of,
    image_event,
    metric_samples,
    processor_env,
    produce_values,
    read_until_ids,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 3
# A killed instance's open transaction blocks read_committed readers (and its partitions' offsets) until the
# broker aborts it: keep that short in tests (the test broker checks for expired transactions every second).
EOS_SETTINGS = {"DELIVERY": "exactly-once", "MAX_IN_FLIGHT": "64", "KAFKA_TRANSACTION_TIMEOUT_MS": "10000"}


def decided(proc: ProcessorProc, peaks: list[float] | None = None) -> float:
    """Events the instance scored or dead-lettered (0 when it does not answer); appends in-flight to `peaks`."""
    try:
        text = proc.get("/metrics")[1].decode()
    except OSError:
        return 0.0
    if peaks is not None:
        peaks.extend(metric_samples(text, "deepfake_in_flight_events"))
    return sum(metric_samples(text, "deepfake_events_scored_total")) + sum(
        metric_samples(text, "deepfake_events_dead_lettered_total")
    )


def assigned(proc: ProcessorProc) -> int:
    """The instance's assigned partition count, from /health."""
    return int(proc.get_json("/health")[1]["kafka"]["assigned_partitions"])


def tally(messages: list, ids: set[str]) -> tuple[set[str], dict[str, int]]:
    """(lost ids, {event_id: count} of those seen more than once)."""
    seen = Counter(event_id_of(m) for m in messages)
    return ids - set(seen), {e: c for e, c in seen.items() if c > 1}


def test_two_instances_with_default_ids_kill9_one_survivor_takes_over_read_committed_sees_each_event_once(
    apache_kafka: Cluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory
) -> None:
    n = 600
    bootstrap = apache_kafka.bootstrap
    inp, out, dlq = (topic_factory(bootstrap, PARTITIONS, prefix) for prefix in ("in", "out", "dlq"))
    ids = {f"eos-{i}" for i in range(n)}
    values = [image_event(f"eos-{i}", jpeg_bytes(64, 64)) for i in range(n)]
    values[7] = b'{"event_id": "eos-7", "not": "an image"}'  # dead letters ride in the same transactions
    headers: list[list[tuple[str, bytes]] | None] = [None] * n
    headers[7] = [("event_id", b"eos-7")]  # invalid_schema: the dead letter's id comes from this header
    env = processor_env(bootstrap, inp, out, dlq, group_id, **EOS_SETTINGS)
    a = processor_factory(env, ready=False, name="eos-a")
    b = processor_factory(env, ready=False, name="eos-b")
    a.wait_ready()
    b.wait_ready()
    wait_for(lambda: assigned(a) + assigned(b) == PARTITIONS and min(assigned(a), assigned(b)) > 0, 60,
             "A and B to share the partitions")  # fmt: skip
    produce_values(bootstrap, inp, values, partitions=PARTITIONS, headers=headers)
    in_flight: list[float] = []
    wait_for(lambda: decided(a, in_flight) >= 40, 60, "A to be mid-stream")
    a.stop(signal.SIGKILL)
    assert 0 < max(in_flight) <= 64, f"deepfake_in_flight_events peaked at {max(in_flight)} in exactly-once mode"
    killed_at = time.monotonic()
    wait_for(lambda: assigned(b) == PARTITIONS, 60, "B to take over A's partitions")
    takeover_s = time.monotonic() - killed_at
    committed = read_until_ids(bootstrap, [out, dlq], PARTITIONS, ids, timeout_s=120, settle_s=2.0)
    all_out_s = time.monotonic() - killed_at
    uncommitted = read_until_ids(bootstrap, [out, dlq], PARTITIONS, ids, timeout_s=30, settle_s=1.0,
                                 config={"isolation.level": "read_uncommitted"})  # fmt: skip
    lost, twice = tally(committed, ids)
    print(f"\nFIGURE exactly-once kill-9 of 1 of 2: events={n} read_committed={len(committed)} lost={len(lost)} "
          f"duplicated={len(twice)} read_uncommitted={len(uncommitted)} (aborted extra: "
          f"{len(uncommitted) - len(committed)}) survivor owns all {takeover_s:.1f}s after the kill, "
          f"all out {all_out_s:.1f}s after it")  # fmt: skip
    assert not lost, f"{len(lost)} events missing, e.g. {sorted(lost)[:5]}\n{b.log_tail()}"
    assert not twice, f"seen more than once by read_committed: {dict(list(twice.items())[:5])}"
    assert len(committed) == n
    assert sum(1 for m in committed if m.topic() == dlq) == 1
    assert len(uncommitted) >= len(committed)
    assert b.stop() == 0


def test_sigterm_in_exactly_once_mode_exits_0_commits_its_open_work_and_the_next_instance_duplicates_nothing(
    apache_kafka: Cluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory
) -> None:
    n = 400
    bootstrap = apache_kafka.bootstrap
    inp, out, dlq = (topic_factory(bootstrap, PARTITIONS, prefix) for prefix in ("in", "out", "dlq"))
    ids = {f"term-{i}" for i in range(n)}
    env = processor_env(bootstrap, inp, out, dlq, group_id, **EOS_SETTINGS)
    a = processor_factory(env, name="term-a")
    produce_values(bootstrap, inp, [image_event(e, jpeg_bytes(64, 64)) for e in sorted(ids)], partitions=PARTITIONS)
    wait_for(lambda: decided(a) >= 40, 60, "A to be mid-stream")
    signalled_at = time.monotonic()
    code = a.stop(signal.SIGTERM)
    stop_s = time.monotonic() - signalled_at
    by_a = read_until_ids(bootstrap, [out, dlq], PARTITIONS, ids, timeout_s=3.0)  # read_committed: A's share
    b = processor_factory(env, name="term-b")
    messages = read_until_ids(bootstrap, [out, dlq], PARTITIONS, ids, timeout_s=120, settle_s=2.0)
    lost, twice = tally(messages, ids)
    print(f"\nFIGURE exactly-once SIGTERM: exit={code} in {stop_s:.1f}s, committed by A={len(by_a)} of {n}; "
          f"after B: lost={len(lost)} duplicated={len(twice)}")  # fmt: skip
    assert code == 0, a.log_tail()
    assert 0 < len(by_a) < n, "A's committed transactions must be visible to read_committed readers after its exit"
    assert not lost, f"{len(lost)} events missing, e.g. {sorted(lost)[:5]}"
    assert not twice, f"seen more than once by read_committed: {dict(list(twice.items())[:5])}"
    assert b.stop() == 0
