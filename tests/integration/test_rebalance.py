"""Scale-out in one consumer group: instances share partitions, join and leave mid-stream, and lose nothing.

Runs on Tansu (cooperative-sticky assignment works there); `DFP_TEST_BOOTSTRAP` points it at a real cluster.
"""

from __future__ import annotations

import signal
import threading
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
    processor_env,
    produce_values,
    read_until_ids,
    wait_for,
)

pytestmark = pytest.mark.slow

PARTITIONS = 6


def assigned(procs: list[ProcessorProc]) -> list[int]:
    return [p.get_json("/health")[1]["kafka"]["assigned_partitions"] for p in procs]


def shared_by(procs: list[ProcessorProc]) -> list[int] | None:
    """The assignment counts once every instance owns some partitions and together they own all of them."""
    counts = assigned(procs)
    return counts if sum(counts) == PARTITIONS and min(counts) > 0 else None


def test_instances_share_partitions_and_lose_nothing_when_one_joins_and_one_leaves_mid_stream(
    tansu: Cluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory
) -> None:
    bootstrap = tansu.bootstrap
    inp, out, dlq = (topic_factory(bootstrap, PARTITIONS, prefix) for prefix in ("in", "out", "dlq"))
    env = processor_env(bootstrap, inp, out, dlq, group_id, MAX_IN_FLIGHT="64")
    a = processor_factory(env, ready=False, name="a")
    b = processor_factory(env, ready=False, name="b")
    a.wait_ready()
    b.wait_ready()
    two = wait_for(lambda: shared_by([a, b]), 60, "A and B to split the 6 partitions")

    image = jpeg_bytes(64, 64)
    ids: list[str] = []
    stop = threading.Event()

    def produce_steadily() -> None:  # ~100 events/s until told to stop: the group changes under a live stream
        while not stop.is_set():
            batch = [f"rb-{len(ids) + i}" for i in range(20)]
            produce_values(bootstrap, inp, [image_event(e, image) for e in batch], partitions=PARTITIONS)
            ids.extend(batch)
            time.sleep(0.2)

    producer = threading.Thread(target=produce_steadily, name="steady-producer")
    producer.start()
    try:
        time.sleep(1.0)
        joined_at = time.monotonic()
        c = processor_factory(env, name="c")  # joins mid-stream
        three = wait_for(lambda: shared_by([a, b, c]), 60, "A, B and C to share the 6 partitions")
        join_s = time.monotonic() - joined_at
        left_at = time.monotonic()
        assert a.stop(signal.SIGTERM) == 0, a.log_tail()  # leaves mid-stream: drains and commits its partitions
        leave_s = time.monotonic() - left_at
        after = wait_for(lambda: shared_by([b, c]), 60, "B and C to take over A's partitions")
        time.sleep(1.0)  # B and C consume the new assignment while events still arrive
    finally:
        stop.set()
        producer.join()
    n = len(ids)
    messages = read_until_ids(bootstrap, [out, dlq], PARTITIONS, set(ids), timeout_s=120, settle_s=1.0)
    counts = Counter(event_id_of(m) for m in messages)
    lost = set(ids) - set(counts)
    dups = sum(c - 1 for c in counts.values())
    print(
        f"\nFIGURE rebalance: assignments two={two} three={three} after_leave={after} "
        f"c_start_to_share={join_s:.1f}s a_left_in={leave_s:.1f}s events={n} lost={len(lost)} duplicates={dups}"
    )
    assert not lost, f"{len(lost)} events lost, e.g. {sorted(lost)[:5]}"
    assert b.stop() == 0 and c.stop() == 0
