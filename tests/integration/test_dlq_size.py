"""No crash loop on size (real Kafka): outcomes a topic refuses for size are dead-lettered with the payload cut.

The input topic accepts 8 MB messages, the dead-letter topic has Kafka's stock 1 MB limit and the result topic a
4 KiB one. 3 MB undecodable images (allowed by DFP_MAX_IMAGE_BYTES) cannot go to the DLQ verbatim, and a result
that echoes 16 KiB of metadata cannot go to the result topic: each becomes one dead letter with its payload cut to
64 KiB and `payload.*` headers, the processor stays up, and every event ends in exactly one topic.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter

import pytest

from processor.settings import MiB
from tests.brokers import Cluster, TopicFactory
from tests.corpus import jpeg_bytes
from tests.integration.conftest import ProcessorFactory
from tests.procs import (
    committed_offsets,
    event_id_of,
    headers_of,
    image_event,
    metric_samples,
    processor_env,
    produce_values,
    read_until_ids,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

STOCK_MAX_MESSAGE_BYTES = "1048588"  # Kafka's default topic limit (the broker's own default here may be higher)


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_oversized_dead_letters_and_results_are_dead_lettered_cut_and_the_processor_stays_up(
    apache_kafka: Cluster,
    topic_factory: TopicFactory,
    group_id: str,
    processor_factory: ProcessorFactory,
    delivery: str,
) -> None:
    bootstrap = apache_kafka.bootstrap
    inp = topic_factory(bootstrap, 1, "in", config={"max.message.bytes": str(8 * MiB)})
    out = topic_factory(bootstrap, 1, "out", config={"max.message.bytes": "4096"})
    dlq = topic_factory(bootstrap, 1, "dlq", config={"max.message.bytes": STOCK_MAX_MESSAGE_BYTES})
    small = jpeg_bytes(64, 64)
    big = [b"\x00not-an-image" + os.urandom(3 * MiB) for _ in range(3)]
    pad = os.urandom(8192).hex()  # incompressible 16 KiB echoed in the result's metadata
    plan: list[tuple[str, bytes, str]] = [  # (event_id, value, expected topic)
        ("ok-0", image_event("ok-0", small), out),
        ("big-0", big[0], dlq),
        ("ok-1", image_event("ok-1", small), out),
        ("big-1", big[1], dlq),
        ("fat-result", image_event("fat-result", small, metadata={"pad": pad}), dlq),
        ("big-2", big[2], dlq),
        ("ok-2", image_event("ok-2", small), out),
    ]
    headers: list[list[tuple[str, bytes]] | None] = [[("event_id", e.encode())] for e, _, _ in plan]
    env = processor_env(
        bootstrap, inp, out, dlq, group_id, MAX_IMAGE_BYTES=str(8 * MiB), COMMIT_INTERVAL_MS="200", DELIVERY=delivery
    )
    proc = processor_factory(env, name="dlq-size")
    started = time.monotonic()
    produce_values(bootstrap, inp, [v for _, v, _ in plan], headers=headers)
    ids = {e for e, _, _ in plan}
    messages = read_until_ids(bootstrap, [out, dlq], 1, ids, timeout_s=90, settle_s=1.0)
    elapsed = time.monotonic() - started
    counts = Counter(event_id_of(m) for m in messages)
    by_id = {event_id_of(m): m for m in messages}
    truncated = sum(metric_samples(proc.get("/metrics")[1].decode(), "deepfake_payload_truncated_total"))
    dups = sum(c - 1 for c in counts.values())
    print(f"\nFIGURE dlq-size {delivery}: events={len(plan)} outputs={len(messages)} lost={len(ids - set(counts))} "
          f"duplicates={dups} truncated_metric={truncated:.0f} all out in {elapsed:.1f}s")  # fmt: skip
    assert counts == Counter(ids), f"not exactly one output per event: {counts}\n{proc.log_tail()}"
    for event_id, value, topic in plan:
        msg = by_id[event_id]
        assert msg.topic() == topic, (event_id, msg.topic())
        if topic != dlq:
            continue
        h = headers_of(msg)
        assert h["payload.original_size"] == str(len(value))
        assert h["payload.sha256"] == hashlib.sha256(value).hexdigest()
        if event_id.startswith("big"):
            assert h["error.code"] == "image_decode_failed"
            assert h["payload.truncated"] == "true" and msg.value() == value[: 64 * 1024]
        else:
            assert h["error.code"] == "result_too_large" and h["error.stage"] == "publish"
            assert h["payload.truncated"] == "false" and msg.value() == value
    assert truncated == 4
    assert proc.alive and proc.get("/readyz")[0] == 200
    wait_for(lambda: committed_offsets(bootstrap, group_id, inp, 1)[0] == len(plan), 30, "offsets committed to the end")
    assert proc.stop() == 0
