"""Scale-out in one consumer group on real Kafka: 2 → 3 → 2 instances under steady load, graceful moves only.

Each move (C joins, then A leaves with SIGTERM) must lose nothing and duplicate nothing: a revoked partition is
drained and committed (at-least-once) or was committed with its last transaction (exactly-once) before its new
owner starts. Per key, results arrive in input-offset order. Runs with the classic protocol and cooperative-sticky,
with KIP-848 (`DFP_KAFKA_GROUP_PROTOCOL=consumer`), and in exactly-once mode; prints the time to resume per move
(from the move until every partition has an output for an input produced after it).
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.brokers import Cluster, TopicFactory
from tests.corpus import jpeg_bytes
from tests.integration.conftest import ProcessorFactory
from tests.procs import OutputWatcher, ProcessorProc, SteadyProducer, processor_env, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 6


def assigned(procs: list[ProcessorProc]) -> list[int]:
    """Each instance's assigned partition count, from /health."""
    return [p.get_json("/health")[1]["kafka"]["assigned_partitions"] for p in procs]


def shared_by(procs: list[ProcessorProc]) -> list[int] | None:
    """The assignment counts once every instance owns some partitions and together they own all of them."""
    counts = assigned(procs)
    return counts if sum(counts) == PARTITIONS and min(counts) > 0 else None


@pytest.mark.parametrize(
    ("protocol", "delivery"),
    [("classic", "at-least-once"), ("consumer", "at-least-once"), ("classic", "exactly-once")],
    ids=["cooperative-sticky", "kip848-consumer", "cooperative-sticky-eos"],
)
def test_graceful_2_3_2_rebalance_under_load_loses_and_duplicates_nothing_and_keeps_key_order(
    apache_kafka: Cluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory,
    protocol: str, delivery: str,
) -> None:  # fmt: skip
    bootstrap = apache_kafka.bootstrap
    inp, out, dlq = (topic_factory(bootstrap, PARTITIONS, prefix) for prefix in ("in", "out", "dlq"))
    settings = {"MAX_IN_FLIGHT": "64", "DELIVERY": delivery, "COMMIT_INTERVAL_MS": "200"}
    if protocol == "consumer":  # KIP-848; the processor drops the classic-only settings FAST_GROUP passes
        settings["KAFKA_GROUP_PROTOCOL"] = "consumer"
    env = processor_env(bootstrap, inp, out, dlq, group_id, **settings)
    a = processor_factory(env, ready=False, name="a")
    b = processor_factory(env, ready=False, name="b")
    a.wait_ready()
    b.wait_ready()
    two = wait_for(lambda: shared_by([a, b]), 60, "A and B to split the partitions")
    with OutputWatcher(bootstrap, [out, dlq], PARTITIONS) as watcher:
        with SteadyProducer(bootstrap, inp, PARTITIONS, jpeg_bytes(64, 64), prefix="rb") as load:
            wait_for(lambda: len(watcher.ids()) >= 2 * PARTITIONS, 60, "outputs to flow")
            joined_at, ends = time.monotonic(), dict(load.ends)
            c = processor_factory(env, name="c")  # joins mid-stream
            three = wait_for(lambda: shared_by([a, b, c]), 60, "A, B and C to share the partitions")
            join_resume = wait_for(lambda: watcher.resumed_after(joined_at, ends), 60, "outputs after C joined")
            left_at, ends = time.monotonic(), dict(load.ends)
            assert a.stop(signal.SIGTERM) == 0, a.log_tail()  # leaves mid-stream: drains and commits its partitions
            after = wait_for(lambda: shared_by([b, c]), 60, "B and C to take over A's partitions")
            leave_resume = wait_for(lambda: watcher.resumed_after(left_at, ends), 60, "outputs after A left")
        ids = set(load.ids)
        wait_for(lambda: ids <= watcher.ids(), 60, "every event's output")
        lost = ids - watcher.ids()
        dups, disorder = watcher.duplicates(), watcher.out_of_order_keys()
    print(f"\nFIGURE rebalance[{protocol},{delivery}]: assignments {two} -> {three} -> {after}; events={len(ids)} "
          f"lost={len(lost)} duplicates={dups} out_of_order_keys={len(disorder)} "
          f"resume_after_join={join_resume:.1f}s resume_after_leave={leave_resume:.1f}s")  # fmt: skip
    assert not lost, f"{len(lost)} events lost, e.g. {sorted(lost)[:5]}"
    assert dups == 0, f"{dups} duplicates on graceful moves"
    assert not disorder, f"outputs out of input-offset order for keys {disorder[:5]}"
    assert b.stop() == 0 and c.stop() == 0
