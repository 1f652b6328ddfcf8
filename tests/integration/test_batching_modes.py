"""Static batch buckets and SLO-adaptive batching run the same pipeline and lose nothing."""

from __future__ import annotations

import json

from confluent_kafka import Producer

from devtools.samples import sample_events
from tests.procs import ProcessorProc, processor_env, read_topics

N = 40


def _every_event_scored_once(tansu, topic_factory, group_id, processor_factory, prefix: str, seed: int,
                             **settings: str) -> ProcessorProc:  # type: ignore[no-untyped-def]  # fmt: skip
    """Run a processor with `settings` over N sample events; assert each got exactly one result."""
    topic_in, topic_out, dlq = (topic_factory(tansu.bootstrap, 2, p) for p in ("in", "out", "dlq"))
    proc = processor_factory(processor_env(tansu.bootstrap, topic_in, topic_out, dlq, group_id, **settings))
    producer = Producer({"bootstrap.servers": tansu.bootstrap, "linger.ms": 5})
    for event in sample_events(N, seed=seed, prefix=prefix):
        producer.produce(topic_in, value=event.value, key=event.key, headers=event.headers or None)
    producer.flush(30)
    outputs = read_topics(tansu.bootstrap, [topic_out, dlq], 2, N, timeout_s=60, settle_s=1.0)
    ids = [json.loads(m.value())["event_id"] for m in outputs if m.topic() == topic_out]
    assert sorted(ids) == sorted({f"{prefix}-{i}" for i in range(N)})
    return proc


def test_static_buckets_and_latency_target_score_every_event_once(
    tansu, topic_factory, group_id, processor_factory
) -> None:  # type: ignore[no-untyped-def]
    proc = _every_event_scored_once(tansu, topic_factory, group_id, processor_factory, "bk", 5,
                                    batch_buckets="1,4,8,16", latency_target_ms="250")  # fmt: skip
    metrics = proc.get("/metrics")[1].decode()
    assert "deepfake_batch_limit " in metrics and "deepfake_batch_wait_seconds " in metrics
    sizes = [line for line in metrics.splitlines() if line.startswith("deepfake_batch_size_count")]
    assert sizes and float(sizes[0].split()[-1]) > 0


def test_cuda_graphs_mode_on_cpu_serves_through_static_bindings_and_scores_every_event_once(
    tansu, topic_factory, group_id, processor_factory
) -> None:  # type: ignore[no-untyped-def]
    # No GPU here: the setting keeps only the per-bucket bound buffers, which is still the path every batch takes.
    proc = _every_event_scored_once(tansu, topic_factory, group_id, processor_factory, "cg", 6,
                                    batch_buckets="1,4,8,32", cuda_graphs="true", providers="cpu")  # fmt: skip
    assert "static per-bucket binding only" in proc.log_path.read_text()
