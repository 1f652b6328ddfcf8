"""HTTP surface: /readyz gates on Kafka and the model, /health's document, /metrics families move."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from devtools.broker import free_port
from devtools.samples import encode, synthetic_image
from tests.brokers import Cluster
from tests.integration.conftest import ProcessorFactory
from tests.procs import ProcessorProc, processor_env, read_topics

PARTITIONS = 3
HEALTH_KEYS = {"status", "service", "model_loaded", "gpu_available", "provider", "variant", "memory_usage", "kafka"}
STAGES = ("queue", "decode", "inference", "produce", "end_to_end")
FAMILIES = (
    "deepfake_events_consumed",
    "deepfake_events_scored",
    "deepfake_events_dead_lettered",
    "deepfake_batch_size",
    "deepfake_stage_latency_seconds",
    "deepfake_consumer_lag",
    "deepfake_in_flight_events",
    "deepfake_model_info",
)


def poll_until(check: Callable[[], Any], what: str, timeout_s: float = 30.0, proc: ProcessorProc | None = None) -> Any:
    """Call `check` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:  # the HTTP server is not listening yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    tail = proc.log_tail() if proc is not None else ""
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}\n{tail}")


def metrics(proc: ProcessorProc) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """family name → {(sample name, sorted labels): value}."""
    status, body = proc.get("/metrics")
    assert status == 200
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        out[family.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
    return out


def sample(families: dict[str, Any], family: str, name: str, **labels: str) -> float:
    return float(families[family].get((name, tuple(sorted(labels.items()))), 0.0))


def total(families: dict[str, Any], family: str, name: str) -> float:
    return sum(v for (n, _), v in families[family].items() if n == name)


def test_readyz_is_503_and_health_not_healthy_while_kafka_is_unreachable(
    group_id: str, processor_factory: ProcessorFactory
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens here
    proc = processor_factory(processor_env(nowhere, "in", "out", "dlq", group_id), ready=False)
    health = poll_until(lambda: _health_if_model_loaded(proc), "the model to load", proc=proc)
    assert health["status"] in ("degraded", "unhealthy")
    assert health["kafka"]["connected"] is False
    # Not ready on any check for a while: the model is loaded, but the consumer cannot join a group.
    for _ in range(5):
        assert proc.get("/readyz")[0] == 503
        assert proc.get("/healthz")[0] == 200
        time.sleep(0.2)
    assert proc.proc is not None and proc.proc.poll() is None, proc.log_tail()
    assert proc.stop() == 0, proc.log_tail()  # SIGTERM is a clean stop even without a broker


def _health_if_model_loaded(proc: ProcessorProc) -> dict[str, Any] | None:
    status, doc = proc.get_json("/health")
    assert status == 200
    return doc if doc["model_loaded"] else None


def test_ready_processor_serves_health_document_and_metrics_that_count_traffic(
    tansu: Cluster, topic_factory: Any, group_id: str, processor_factory: ProcessorFactory
) -> None:
    in_topic = topic_factory(tansu.bootstrap, partitions=PARTITIONS, prefix="in")
    out_topic = topic_factory(tansu.bootstrap, partitions=PARTITIONS, prefix="out")
    dlq_topic = topic_factory(tansu.bootstrap, partitions=PARTITIONS, prefix="dlq")
    proc = processor_factory(processor_env(tansu.bootstrap, in_topic, out_topic, dlq_topic, group_id))
    assert proc.get("/readyz")[0] == 200

    health = poll_until(lambda: _healthy(proc), "status healthy with 3 partitions", proc=proc)
    assert set(health) >= HEALTH_KEYS
    assert health["service"] == "deepfake-processor"
    assert health["model_loaded"] is True
    assert isinstance(health["gpu_available"], bool)
    assert health["provider"] and health["variant"]
    assert {"gpu_memory_percent", "used_mb", "total_mb"} <= set(health["memory_usage"])
    assert {"connected", "assigned_partitions", "lag"} <= set(health["kafka"])

    before = metrics(proc)
    assert set(FAMILIES) <= set(before), set(FAMILIES) - set(before)
    _check_model_info(before, health)
    for stage in STAGES:
        assert ("deepfake_stage_latency_seconds_count", (("stage", stage),)) in before[
            "deepfake_stage_latency_seconds"
        ], stage
    assert total(before, "deepfake_events_consumed", "deepfake_events_consumed_total") == 0

    good, bad = 6, 2
    _produce_traffic(tansu.bootstrap, in_topic, good)
    assert len(read_topics(tansu.bootstrap, [out_topic, dlq_topic], PARTITIONS, expected=good + bad)) == good + bad

    def counted() -> dict[str, Any] | None:
        after = metrics(proc)
        done = sample(after, "deepfake_stage_latency_seconds", "deepfake_stage_latency_seconds_count",
                      stage="end_to_end")  # fmt: skip
        return after if done >= good + bad else None

    after = poll_until(counted, "metrics to count every output", proc=proc)
    assert total(after, "deepfake_events_consumed", "deepfake_events_consumed_total") == good + bad
    assert total(after, "deepfake_events_scored", "deepfake_events_scored_total") == good
    assert sample(after, "deepfake_events_dead_lettered", "deepfake_events_dead_lettered_total",
                  code="invalid_json") == 1  # fmt: skip
    assert sample(after, "deepfake_events_dead_lettered", "deepfake_events_dead_lettered_total",
                  code="invalid_schema") == 1  # fmt: skip
    assert sample(after, "deepfake_batch_size", "deepfake_batch_size_sum") == good  # one row per image, no faces
    assert sample(after, "deepfake_batch_size", "deepfake_batch_size_count") >= 1
    for stage in STAGES:
        count = sample(after, "deepfake_stage_latency_seconds", "deepfake_stage_latency_seconds_count", stage=stage)
        assert count > 0, stage


def _healthy(proc: ProcessorProc) -> dict[str, Any] | None:
    status, doc = proc.get_json("/health")
    assert status == 200
    kafka = doc["kafka"]
    return doc if doc["status"] == "healthy" and kafka["connected"] and kafka["assigned_partitions"] == 3 else None


def _check_model_info(families: dict[str, Any], health: dict[str, Any]) -> None:
    """One deepfake_model_info series, value 1, labelled with what /health says is loaded."""
    series = {dict(lb)["variant"]: (dict(lb), v) for (n, lb), v in families["deepfake_model_info"].items()
              if n == "deepfake_model_info"}  # fmt: skip
    assert len(series) == 1
    labels, value = series[health["variant"]]
    assert value == 1.0
    assert labels["provider"] == health["provider"] and labels["name"]


def _produce_traffic(bootstrap: str, topic: str, good: int) -> None:
    rng = np.random.default_rng(3)
    image = encode(synthetic_image(rng, 64, 48), "jpeg")
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(good):
        producer.produce(topic, value=image, key=f"k{i}".encode(), headers=[("event_id", f"m-{i}".encode())],
                         partition=i % PARTITIONS)  # fmt: skip
    producer.produce(topic, value=b"{not json", partition=0)
    producer.produce(topic, value=json.dumps({"event_id": 5, "image_b64": "AAAA"}).encode(), partition=1)
    assert producer.flush(30) == 0
