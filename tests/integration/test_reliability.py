"""Fault injection with real brokers and real processor processes: crashes, signals, backpressure, broker trouble,
failed deliveries and poison batches. docs/RELIABILITY.md says what each test proves, where, and the figures.

Figures (duplicates, shutdown seconds, RSS) are printed, never asserted against the clock; run with `-s` to see them.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from devtools.broker import EmbeddedBroker, create_topics, free_port
from tests.brokers import Cluster, RestartableCluster, TopicFactory
from tests.corpus import jpeg_bytes, noise
from tests.integration.conftest import ProcessorFactory
from tests.procs import (
    ProcessorProc,
    Sampler,
    committed_offsets,
    event_id_of,
    headers_of,
    image_event,
    metric_samples,
    processor_env,
    produce_values,
    read_until_ids,
    rss_mb,
    wait_for,
)

pytestmark = pytest.mark.slow

SMALL_JPEG = jpeg_bytes(64, 64)


def make_topics(bootstrap: str, topic_factory: TopicFactory, partitions: int) -> tuple[str, str, str]:
    return (
        topic_factory(bootstrap, partitions, "in"),
        topic_factory(bootstrap, partitions, "out"),
        topic_factory(bootstrap, partitions, "dlq"),
    )


def metric(proc: ProcessorProc, name: str) -> float:
    """Sum of a metric's samples (all labels) scraped from the processor's /metrics."""
    status, body = proc.get("/metrics")
    assert status == 200
    return sum(metric_samples(body.decode(), name))


def finished(proc: ProcessorProc) -> float:
    """Events the processor decided (scored + dead-lettered); they may still be on their way to the broker."""
    return metric(proc, "deepfake_events_scored_total") + metric(proc, "deepfake_events_dead_lettered_total")


def tally(messages: list, ids: set[str]) -> tuple[set[str], int]:
    """(lost ids, duplicate count) of `ids` across the messages read back."""
    counts = Counter(event_id_of(m) for m in messages)
    return ids - set(counts), sum(c - 1 for e, c in counts.items() if e in ids)


# --- crashes ------------------------------------------------------------------------------------------------


def kill9_mid_stream(
    bootstrap: str, broker: str, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory
) -> None:
    n, max_in_flight = 400, 64
    inp, out, dlq = make_topics(bootstrap, topic_factory, 3)
    ids = {f"k9-{i}" for i in range(n)}
    produce_values(bootstrap, inp, [image_event(f"k9-{i}", SMALL_JPEG) for i in range(n)], partitions=3)
    env = processor_env(bootstrap, inp, out, dlq, group_id, MAX_IN_FLIGHT=str(max_in_flight))
    first = processor_factory(env, name="a")
    wait_for(lambda: finished(first) >= n // 4, 60, "a quarter of the events to be scored by A")
    first.stop(signal.SIGKILL)
    done_by_a = len(read_until_ids(bootstrap, [out, dlq], 3, ids, timeout_s=2.0))
    started = time.monotonic()
    second = processor_factory(env, name="b")
    messages = read_until_ids(bootstrap, [out, dlq], 3, ids, timeout_s=120, settle_s=1.0)
    took = time.monotonic() - started
    lost, dups = tally(messages, ids)
    print(f"\nFIGURE kill9[{broker}]: events={n} max_in_flight={max_in_flight} outputs_before_kill={done_by_a} "
          f"lost={len(lost)} duplicates={dups} takeover_and_finish_s={took:.1f}")  # fmt: skip
    assert not lost, f"{len(lost)} events lost after kill -9, e.g. {sorted(lost)[:5]}\n{second.log_tail()}"
    assert dups <= max_in_flight, f"{dups} duplicates > MAX_IN_FLIGHT={max_in_flight}"
    assert second.stop() == 0


def test_kill9_mid_stream_loses_no_event_and_duplicates_stay_within_max_in_flight(
    tansu: Cluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory
) -> None:
    kill9_mid_stream(tansu.bootstrap, "tansu", topic_factory, group_id, processor_factory)


@pytest.mark.kafka
def test_kafka_kill9_mid_stream_loses_no_event_and_duplicates_stay_within_max_in_flight(
    apache_kafka: Cluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory
) -> None:
    kill9_mid_stream(apache_kafka.bootstrap, "kafka", topic_factory, group_id, processor_factory)


# --- signals ------------------------------------------------------------------------------------------------


def busy_processor(
    cluster: Cluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory, n: int
) -> tuple[ProcessorProc, str, str, str, dict[int, int], set[str]]:
    """A processor that has consumed all `n` large-image events and is still working through them."""
    bootstrap = cluster.bootstrap
    inp, out, dlq = make_topics(bootstrap, topic_factory, 1)
    large = jpeg_bytes(720, 1280)
    ids = {f"sig-{i}" for i in range(n)}
    ends = produce_values(bootstrap, inp, [image_event(f"sig-{i}", large) for i in range(n)])
    env = processor_env(bootstrap, inp, out, dlq, group_id, SHUTDOWN_TIMEOUT_S="20", MAX_BATCH_SIZE="4")
    proc = processor_factory(env, name="sig")
    wait_for(lambda: metric(proc, "deepfake_events_consumed_total") >= n, 60, "every event to be consumed")
    return proc, inp, out, dlq, ends, ids


def test_sigterm_drains_in_flight_delivers_commits_end_offsets_and_exits_0(
    tansu: Cluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory
) -> None:
    n = 150
    proc, inp, out, dlq, ends, ids = busy_processor(tansu, topic_factory, group_id, processor_factory, n)
    in_flight_at_signal = metric(proc, "deepfake_in_flight_events")
    left_undecided = n - finished(proc)
    started = time.monotonic()
    code = proc.stop(signal.SIGTERM, timeout_s=40)
    shutdown_s = time.monotonic() - started
    print(f"\nFIGURE sigterm: in_flight_at_signal={in_flight_at_signal:.0f} undecided_at_signal={left_undecided:.0f} "
          f"shutdown_s={shutdown_s:.2f} (DFP_SHUTDOWN_TIMEOUT_S=20) exit={code}")  # fmt: skip
    assert code == 0, proc.log_tail()
    assert shutdown_s < 20
    messages = read_until_ids(tansu.bootstrap, [out, dlq], 1, ids, timeout_s=15)
    lost, dups = tally(messages, ids)
    assert not lost and dups == 0, (len(lost), dups)
    assert committed_offsets(tansu.bootstrap, group_id, inp, 1) == ends


def test_second_signal_exits_at_once_with_non_zero_code(
    tansu: Cluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory
) -> None:
    n = 100
    proc, *_ = busy_processor(tansu, topic_factory, group_id, processor_factory, n)
    assert proc.proc is not None
    proc.signal(signal.SIGTERM)
    # The first signal is being handled (draining: /readyz turns 503) before the second one is sent.
    wait_for(lambda: proc.proc.poll() is not None or proc.get("/readyz")[0] == 503, 10, "draining to start", 0.01)
    assert proc.proc.poll() is None, "the drain finished before the second signal; give it more work"
    undecided = n - finished(proc)
    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    code = proc.proc.wait(10)
    print(f"\nFIGURE second-signal: exit={code} after {time.monotonic() - started:.3f}s, "
          f"undecided_when_sent={undecided:.0f}")  # fmt: skip
    assert code != 0


# --- backpressure -------------------------------------------------------------------------------------------


def test_backpressure_pauses_consumer_bounds_in_flight_and_rss(
    tansu: Cluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory
) -> None:
    max_in_flight = 32
    bootstrap = tansu.bootstrap
    inp, out, dlq = make_topics(bootstrap, topic_factory, 2)
    large = jpeg_bytes(720, 1280)

    def batch(tag: str, count: int) -> set[str]:
        produce_values(bootstrap, inp, [image_event(f"{tag}-{i}", large) for i in range(count)], partitions=2)
        return {f"{tag}-{i}" for i in range(count)}

    ids_1x = batch("bp1", max_in_flight)  # a 1× backlog waits before the processor starts
    env = processor_env(bootstrap, inp, out, dlq, group_id, MAX_IN_FLIGHT=str(max_in_flight),
                        COMMIT_INTERVAL_MS="200")  # fmt: skip
    proc = processor_factory(env, name="bp")
    with Sampler(lambda: rss_mb(proc.pid)) as rss_1x:
        read_until_ids(bootstrap, [out, dlq], 2, ids_1x, timeout_s=60)
    ids_10x = batch("bp10", 10 * max_in_flight)  # then a 10× backlog lands at once

    def scrape() -> tuple[float, float]:
        text = proc.get("/metrics")[1].decode()
        return sum(metric_samples(text, "deepfake_consumer_paused")), sum(
            metric_samples(text, "deepfake_in_flight_events")
        )

    with Sampler(lambda: rss_mb(proc.pid)) as rss_10x, Sampler(scrape, 0.02) as gauges:
        messages = read_until_ids(bootstrap, [out, dlq], 2, ids_10x, timeout_s=120)
    lost, _ = tally(messages, ids_10x)
    peak_1x, peak_10x = max(rss_1x.values), max(rss_10x.values)
    paused = [p for p, _ in gauges.values]
    peak_in_flight = max(f for _, f in gauges.values)
    print(f"\nFIGURE backpressure: max_in_flight={max_in_flight} peak_in_flight={peak_in_flight:.0f} "
          f"paused_samples={sum(paused):.0f}/{len(paused)} peak_rss_1x={peak_1x:.0f}MiB "
          f"peak_rss_10x={peak_10x:.0f}MiB ratio={peak_10x / peak_1x:.2f}")  # fmt: skip
    assert not lost
    assert 1 in paused, "the consumer never reported being paused under a 10x backlog"
    # Admission takes at most MAX_IN_FLIGHT - in_flight per poll, so the gauge can never pass MAX_IN_FLIGHT.
    assert peak_in_flight <= max_in_flight
    assert peak_10x / peak_1x < 1.5
    assert proc.stop() == 0


# --- broker trouble -----------------------------------------------------------------------------------------


def test_broker_down_at_start_stays_alive_unready_then_processes_once_broker_appears(
    processor_factory: ProcessorFactory, group_id: str
) -> None:
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    env = processor_env(bootstrap, "bd-in", "bd-out", "bd-dlq", group_id)
    proc = processor_factory(env, ready=False, name="down")
    assert proc.proc is not None
    wait_for(lambda: _answers(proc), 60, "the HTTP server to answer")
    wait_for(lambda: proc.get_json("/health")[1]["model_loaded"], 60, "the model to load")
    observed: list[tuple[int, int, str, bool]] = []
    until = time.monotonic() + 10.0
    while time.monotonic() < until:  # no crash loop: one process, alive, live but not ready
        assert proc.proc.poll() is None, f"processor exited while the broker was down:\n{proc.log_tail()}"
        health = proc.get_json("/health")[1]
        observed.append((proc.get("/healthz")[0], proc.get("/readyz")[0], health["status"],
                         health["kafka"]["connected"]))  # fmt: skip
        time.sleep(0.5)
    print(f"\nFIGURE broker-down: {len(observed)} samples over 10 s, last={observed[-1]}")
    assert all(live == 200 and ready == 503 for live, ready, _, _ in observed)
    assert all(status in ("degraded", "unhealthy") and not connected for _, _, status, connected in observed)

    broker = EmbeddedBroker(port=port)
    broker.start()
    try:
        create_topics(bootstrap, ["bd-in", "bd-out", "bd-dlq"], 1)
        ids = {f"bd-{i}" for i in range(20)}
        produce_values(bootstrap, "bd-in", [image_event(e, SMALL_JPEG) for e in sorted(ids)])
        appeared = time.monotonic()
        proc.wait_ready(60)
        messages = read_until_ids(bootstrap, ["bd-out", "bd-dlq"], 1, ids, timeout_s=60)
        print(f"FIGURE broker-down: ready and done {time.monotonic() - appeared:.1f}s after the broker appeared")
        assert not tally(messages, ids)[0]
        assert proc.get_json("/health")[1]["kafka"]["connected"] is True
        assert proc.stop() == 0
    finally:
        broker.stop()


def _answers(proc: ProcessorProc) -> bool:
    try:
        return proc.get("/healthz", timeout=1.0)[0] == 200
    except OSError:
        return False


@pytest.mark.kafka
def test_kafka_broker_restart_mid_stream_loses_no_event(
    apache_kafka: RestartableCluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory
) -> None:
    n = 200
    bootstrap = apache_kafka.bootstrap
    inp, out, dlq = make_topics(bootstrap, topic_factory, 3)
    ids = {f"rs-{i}" for i in range(n)}
    produce_values(bootstrap, inp, [image_event(f"rs-{i}", SMALL_JPEG) for i in range(n)], partitions=3)
    env = processor_env(bootstrap, inp, out, dlq, group_id, MAX_IN_FLIGHT="32")
    proc = processor_factory(env, name="restart")
    wait_for(lambda: finished(proc) >= 50, 60, "some events to be scored")
    started = time.monotonic()
    apache_kafka.restart()
    downtime = time.monotonic() - started
    messages = read_until_ids(bootstrap, [out, dlq], 3, ids, timeout_s=120)
    resumed = time.monotonic() - started - downtime
    lost, dups = tally(messages, ids)
    print(f"\nFIGURE kafka-restart: broker down/up {downtime:.1f}s, all events out {resumed:.1f}s later, "
          f"lost={len(lost)} duplicates={dups}")  # fmt: skip
    assert not lost, proc.log_tail()
    assert proc.proc is not None and proc.proc.poll() is None, "the processor died with the broker"
    assert proc.stop() == 0


@pytest.mark.kafka
def test_kafka_consumer_lag_is_reported_while_behind_and_returns_to_zero(
    apache_kafka: Cluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory
) -> None:
    n = 160
    bootstrap = apache_kafka.bootstrap
    inp, out, dlq = make_topics(bootstrap, topic_factory, 1)
    ids = {f"lag-{i}" for i in range(n)}
    produce_values(bootstrap, inp, [image_event(f"lag-{i}", SMALL_JPEG) for i in range(n)])
    env = processor_env(bootstrap, inp, out, dlq, group_id, MAX_BATCH_SIZE="1", MAX_IN_FLIGHT="32")
    proc = processor_factory(env, name="lag")

    def probe() -> tuple[int | None, float]:
        health = proc.get_json("/health")[1]
        return health["kafka"]["lag"], metric(proc, "deepfake_consumer_lag")

    with Sampler(probe, 0.2) as samples:
        read_until_ids(bootstrap, [out, dlq], 1, ids, timeout_s=90)
        wait_for(lambda: probe() == (0, 0.0), 15, "lag to return to 0")
    peak = max((lag or 0) for lag, _ in samples.values)
    peak_metric = max(m for _, m in samples.values)
    print(f"\nFIGURE lag: backlog={n} peak /health lag={peak} peak deepfake_consumer_lag={peak_metric:.0f}, then 0")
    assert 0 < peak <= n and 0 < peak_metric <= n
    assert proc.stop() == 0


# --- delivery failure ---------------------------------------------------------------------------------------


@pytest.mark.kafka
def test_kafka_failed_delivery_exits_1_and_never_commits_past_the_event(
    apache_kafka: Cluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory
) -> None:
    # Both output topics take 2 KiB at most: the too-big result is refused, and so is its dead letter even with the
    # payload cut to 64 KiB (test_dlq_size.py shows the usual case, where the cut copy fits and the processor goes on).
    bootstrap = apache_kafka.bootstrap
    inp = topic_factory(bootstrap, 1, "in")
    dlq = topic_factory(bootstrap, 1, "dlq", config={"max.message.bytes": "2048"})
    out = topic_factory(bootstrap, 1, "out", config={"max.message.bytes": "2048"})
    env = processor_env(bootstrap, inp, out, dlq, group_id, COMMIT_INTERVAL_MS="100")
    proc = processor_factory(env, name="deliv")
    produce_values(bootstrap, inp, [image_event("fits", SMALL_JPEG)])  # offset 0: its result fits
    wait_for(lambda: committed_offsets(bootstrap, group_id, inp, 1)[0] == 1, 30, "offset 0 to be committed")
    # Offset 1's result carries 16 KiB of incompressible metadata: the topic refuses it (MESSAGE_TOO_LARGE).
    pad = os.urandom(8192).hex()
    produce_values(bootstrap, inp, [image_event("too-big", SMALL_JPEG, metadata={"pad": pad}),
                                    image_event("after", SMALL_JPEG)])  # fmt: skip
    assert proc.proc is not None
    code = proc.proc.wait(60)
    committed = committed_offsets(bootstrap, group_id, inp, 1)[0]
    log = proc.log_path.read_text()
    failure = next((json.loads(line) for line in log.splitlines() if '"stopping on a fatal error"' in line), {})
    print(f"\nFIGURE delivery-failure: exit={code} committed_offset={committed} (failed event at offset 1) "
          f"error={failure.get('error')!r}")  # fmt: skip
    assert code == 1, proc.log_tail()
    assert committed <= 1, "the group's offset moved past an event whose output was never delivered"
    assert "for size, even cut" in log and "too-big" in log


# --- poison batch -------------------------------------------------------------------------------------------


def build_poison_model(model_dir: Path) -> None:
    """A model directory (docs/MODELS.md) whose logits are [m, (m+1)/(m+1)] with m = mean(pixel_values).

    A black image normalises to m = -1 (mean/std 0.5), so its second logit is 0/0 = NaN; any other image scores.
    """
    from onnx import TensorProto, checker, helper, save

    nodes = [
        helper.make_node("ReduceMean", ["pixel_values"], ["m4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["m4", "shape"], ["m"]),
        helper.make_node("Add", ["m", "one"], ["m1"]),
        helper.make_node("Div", ["m1", "m1"], ["ratio"]),
        helper.make_node("Concat", ["m", "ratio"], ["logits"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "poison",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=[
            helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model)
    (model_dir / "onnx").mkdir(parents=True)
    save(model, str(model_dir / "onnx" / "model.onnx"))
    (model_dir / "config.json").write_text(json.dumps({"id2label": {"0": "Real", "1": "Fake"}}))
    (model_dir / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5], "resample": 2, "rescale_factor": 1 / 255, "size": {"height": 224, "width": 224},
    }))  # fmt: skip


def test_poison_images_in_mixed_batches_go_to_dlq_as_inference_failed_and_the_rest_is_scored(
    tansu: Cluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory, tmp_path: Path
) -> None:
    model_dir = tmp_path / "poison-model"
    build_poison_model(model_dir)
    bootstrap = tansu.bootstrap
    inp, out, dlq = make_topics(bootstrap, topic_factory, 1)
    ok, buf = cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))  # lossless: decodes to exact zeros
    assert ok
    black, normal = buf.tobytes(), cv2.imencode(".png", noise(32, 32))[1].tobytes()
    values, poison = [], set()
    for i in range(60):
        if i % 3 == 0:
            poison.add(f"p-{i}")
        values.append(image_event(f"p-{i}", black if i % 3 == 0 else normal))
    produce_values(bootstrap, inp, values)  # pre-produced, so batches fill up and mix both kinds
    env = processor_env(bootstrap, inp, out, dlq, group_id, MODEL_DIR=str(model_dir), MAX_BATCH_SIZE="8",
                        MAX_BATCH_WAIT_MS="50")  # fmt: skip
    proc = processor_factory(env, name="poison")
    ids = {f"p-{i}" for i in range(60)}
    messages = read_until_ids(bootstrap, [out, dlq], 1, ids, timeout_s=60)
    by_topic: dict[str, dict[str, dict[str, str]]] = {out: {}, dlq: {}}
    for msg in messages:
        by_topic[msg.topic() or ""][event_id_of(msg)] = headers_of(msg)
    batches = metric(proc, "deepfake_batch_size_count")
    mean_batch = metric(proc, "deepfake_batch_size_sum") / batches
    print(f"\nFIGURE poison: scored={len(by_topic[out])} inference_failed={len(by_topic[dlq])} "
          f"batches={batches:.0f} mean_batch={mean_batch:.1f}")  # fmt: skip
    assert set(by_topic[dlq]) == poison
    assert {h["error.code"] for h in by_topic[dlq].values()} == {"inference_failed"}
    assert set(by_topic[out]) == ids - poison
    assert mean_batch > 1, "batches never mixed poison and normal images"
    assert proc.get("/readyz")[0] == 200 and proc.stop() == 0
