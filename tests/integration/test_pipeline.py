"""End to end on a real broker: every input event becomes exactly one result or one dead letter (docs/EVENTS.md)."""

from __future__ import annotations

import base64
import json
import signal
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from devtools.samples import encode as encode_image
from devtools.samples import synthetic_image
from schemas import DLQ_HEADERS, ScoreResult
from tests.brokers import Cluster
from tests.corpus import bad_events, good_images
from tests.integration.conftest import ProcessorFactory
from tests.procs import headers_of, processor_env, read_topics

PARTITIONS = 3
Headers = list[tuple[str, bytes]]


@dataclass
class Sent:
    """One produced input event and where the broker put it."""

    key: bytes | None
    value: bytes
    headers: Headers | None
    partition: int
    event_id: str | None = None  # None: the processor must derive <topic>:<partition>:<offset>
    faces: list[dict[str, int]] | None = None
    metadata: dict[str, Any] | None = None
    expected_code: str | None = None  # for dead letters
    name: str = ""
    offset: int = -1


def produce(bootstrap: str, topic: str, events: list[Sent]) -> None:
    """Produce to explicit partitions and record each event's offset from its delivery report."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 16 * 1024 * 1024})
    errors: list[str] = []

    def on_delivery(event: Sent, err: Any, msg: Message) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            event.offset = msg.offset()

    for event in events:
        producer.produce(topic, value=event.value, key=event.key, headers=event.headers, partition=event.partition,
                         on_delivery=lambda err, msg, event=event: on_delivery(event, err, msg))  # fmt: skip
        producer.poll(0)
    assert producer.flush(30) == 0, "input events not delivered"
    assert not errors, errors


def by_source(events: list[Sent]) -> dict[tuple[int, int], Sent]:
    return {(e.partition, e.offset): e for e in events}


def end_offsets(events: list[Sent]) -> dict[int, int]:
    ends: dict[int, int] = {}
    for e in events:
        ends[e.partition] = max(ends.get(e.partition, 0), e.offset + 1)
    return ends


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets (OffsetFetch; this consumer never joins the group)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in tps}


def topics(tansu: Cluster, topic_factory: Any) -> tuple[str, str, str]:
    return (topic_factory(tansu.bootstrap, partitions=PARTITIONS, prefix="in"),
            topic_factory(tansu.bootstrap, partitions=PARTITIONS, prefix="out"),
            topic_factory(tansu.bootstrap, partitions=PARTITIONS, prefix="dlq"))  # fmt: skip


# --- the mixed valid stream ---------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def mixed_events(n: int) -> list[Sent]:
    """JSON (JPEG/PNG/WebP, with and without faces, data: URL) and raw (with and without event_id header)."""
    rng = np.random.default_rng(7)
    images = {
        fmt: [encode_image(synthetic_image(rng, 128, 96), fmt) for _ in range(3)] for fmt in ("jpeg", "png", "webp")
    }
    one_face = [{"x": 20, "y": 10, "width": 60, "height": 70}]
    two_faces = [{"x": 0, "y": 0, "width": 40, "height": 40}, {"x": 100, "y": 60, "width": 60, "height": 60}]
    events: list[Sent] = []
    for i in range(n):
        kind = i % 8
        key = None if i % 2 else f"post-{i}".encode()
        image = images[("jpeg", "png", "webp")[i % 3]][i % 3]
        part = i % PARTITIONS
        event_id = f"e-{i}"
        doc: dict[str, Any] = {"event_id": event_id, "post_id": f"p-{i}", "user_id": "u-1", "image_b64": _b64(image)}
        if kind in (3, 6):  # raw bytes, id from the header
            events.append(Sent(key, image, [("event_id", event_id.encode())], part, event_id))
            continue
        if kind == 4:  # raw bytes, no header: id is <topic>:<partition>:<offset>
            events.append(Sent(key, image, None, part, None))
            continue
        faces = {2: one_face, 5: two_faces}.get(kind)
        metadata = {"i": i, "tags": ["a"]} if kind == 5 else None
        headers: Headers | None = None
        if faces:
            doc["faces"] = faces
        if metadata:
            doc["metadata"] = metadata
        if kind == 7:  # data: URL, content-type header, unknown extra field
            doc["image_b64"] = "data:image/png;base64," + doc["image_b64"]
            doc["camera"] = "front"
            headers = [("content-type", b"application/json")]
        events.append(Sent(key, json.dumps(doc).encode(), headers, part, event_id, faces, metadata))
    return events


def check_result(msg: Message, sent: Sent, input_topic: str) -> ScoreResult:
    result = ScoreResult.model_validate_json(msg.value())
    expected_id = sent.event_id or f"{input_topic}:{sent.partition}:{sent.offset}"
    assert result.event_id == expected_id
    assert headers_of(msg).get("event_id") == result.event_id
    assert msg.key() == sent.key  # a null key stays null
    assert (result.source.topic, result.source.partition, result.source.offset) == (
        input_topic,
        sent.partition,
        sent.offset,
    )
    assert sum(result.scores.values()) == pytest.approx(1.0, abs=1e-4)
    assert 0.0 <= result.fake_score <= 1.0
    assert result.model.name and result.model.variant and result.model.provider
    assert result.metadata == sent.metadata
    if sent.faces:
        assert result.faces is not None
        assert [f.box.model_dump() for f in result.faces] == sent.faces
        assert result.fake_score == pytest.approx(max(f.fake_score for f in result.faces))
    else:
        assert result.faces is None
    return result


def check_partition_order(outputs: list[Message]) -> None:
    """Per output partition, the outputs of one input partition appear in increasing input offset."""
    seen: dict[tuple[str, int, int], list[int]] = defaultdict(list)
    for msg in outputs:
        source = json.loads(msg.value())["source"]
        seen[(msg.topic(), msg.partition(), source["partition"])].append(source["offset"])
    for offsets in seen.values():
        assert offsets == sorted(offsets)


def test_mixed_valid_events_each_produce_exactly_one_result(
    tansu: Cluster, topic_factory: Any, group_id: str, processor_factory: ProcessorFactory
) -> None:
    n = 40
    in_topic, out_topic, dlq_topic = topics(tansu, topic_factory)
    processor_factory(processor_env(tansu.bootstrap, in_topic, out_topic, dlq_topic, group_id))
    events = mixed_events(n)
    started = time.monotonic()
    produce(tansu.bootstrap, in_topic, events)
    read_topics(tansu.bootstrap, [out_topic, dlq_topic], PARTITIONS, expected=n)
    elapsed = time.monotonic() - started
    print(f"integration throughput: {n / elapsed:.0f} events/s ({n} events in {elapsed:.2f} s, end to end)")
    # Read again and keep reading a moment past n, so a duplicate would be seen.
    outputs = read_topics(tansu.bootstrap, [out_topic, dlq_topic], PARTITIONS, expected=n, settle_s=1.0)
    dead = [m for m in outputs if m.topic() == dlq_topic]
    assert not dead, [headers_of(m).get("error.code") for m in dead]
    assert len(outputs) == n
    sources = by_source(events)
    results = [check_result(m, sources[_source_of(m)], in_topic) for m in outputs]
    assert len({(r.source.partition, r.source.offset) for r in results}) == n
    check_partition_order(outputs)


def _source_of(msg: Message) -> tuple[int, int]:
    source = json.loads(msg.value())["source"]
    return source["partition"], source["offset"]


# --- dead letters -------------------------------------------------------------------------------------------

MAX_IMAGE_BYTES = 512 * 1024  # above the corpus's 405 KB good JPEG, far below the default
MAX_IMAGE_PIXELS = 1_000_000


def corpus_events() -> tuple[list[Sent], list[Sent]]:
    bad = [
        Sent(
            None if i % 3 == 0 else f"k-{case.name}".encode(),
            case.value,
            case.headers,
            i % PARTITIONS,
            expected_code=case.expected_code,
            name=case.name,
        )
        for i, case in enumerate(bad_events(max_image_bytes=MAX_IMAGE_BYTES, max_image_pixels=MAX_IMAGE_PIXELS))
    ]
    good = [
        Sent(
            f"good-{name}".encode(),
            data,
            [("event_id", f"good-{name}".encode())],
            i % PARTITIONS,
            event_id=f"good-{name}",
            name=name,
        )
        for i, (name, data) in enumerate(good_images().items())
    ]
    return bad, good


def check_dead_letter(msg: Message, sent: Sent, input_topic: str) -> None:
    headers = headers_of(msg)
    assert all(h in headers for h in DLQ_HEADERS), (sent.name, headers.keys())
    assert headers["error.code"] == sent.expected_code, (sent.name, headers["error.code"], headers["error.message"])
    assert headers["error.message"] and headers["error.stage"]
    assert headers["source.topic"] == input_topic
    assert (int(headers["source.partition"]), int(headers["source.offset"])) == (sent.partition, sent.offset)
    assert headers["source.timestamp"].isdigit()
    assert msg.key() == sent.key, sent.name
    # Byte for byte; an empty value may come back as null from the broker, which is the same zero bytes.
    assert (msg.value() or b"") == sent.value, sent.name


def test_every_bad_event_is_dead_lettered_once_with_its_code_and_good_images_are_scored(
    tansu: Cluster, topic_factory: Any, group_id: str, processor_factory: ProcessorFactory
) -> None:
    in_topic, out_topic, dlq_topic = topics(tansu, topic_factory)
    proc = processor_factory(processor_env(tansu.bootstrap, in_topic, out_topic, dlq_topic, group_id,
                                           max_image_bytes=str(MAX_IMAGE_BYTES),
                                           max_image_pixels=str(MAX_IMAGE_PIXELS)))  # fmt: skip
    bad, good = corpus_events()
    events = bad + good
    produce(tansu.bootstrap, in_topic, events)
    outputs = read_topics(tansu.bootstrap, [out_topic, dlq_topic], PARTITIONS, expected=len(events), settle_s=1.0)
    sources = by_source(events)
    dead = {_dlq_source(m): m for m in outputs if m.topic() == dlq_topic}
    scored = {_source_of(m): m for m in outputs if m.topic() == out_topic}
    assert len(outputs) == len(events)  # exactly one output per input, no duplicates
    missing_bad = [e.name for e in bad if (e.partition, e.offset) not in dead]
    assert not missing_bad, f"not dead-lettered: {missing_bad}"
    for source, msg in dead.items():
        check_dead_letter(msg, sources[source], in_topic)
    wrongly_dead = {sources[s].name: headers_of(m)["error.code"] for s, m in dead.items() if sources[s] in good}
    assert not wrongly_dead, f"good images dead-lettered: {wrongly_dead}"
    for event in good:
        check_result(scored[(event.partition, event.offset)], event, in_topic)
    # The processor survived all of it.
    assert proc.proc is not None and proc.proc.poll() is None, proc.log_tail()
    assert proc.get("/healthz")[0] == 200


def _dlq_source(msg: Message) -> tuple[int, int]:
    headers = headers_of(msg)
    return int(headers["source.partition"]), int(headers["source.offset"])


# --- shutdown -----------------------------------------------------------------------------------------------


def test_sigterm_after_processing_exits_zero_with_offsets_committed_to_the_end(
    tansu: Cluster, topic_factory: Any, group_id: str, processor_factory: ProcessorFactory
) -> None:
    in_topic, out_topic, dlq_topic = topics(tansu, topic_factory)
    # No interval commits: whatever is committed at the end was committed by the SIGTERM shutdown.
    proc = processor_factory(processor_env(tansu.bootstrap, in_topic, out_topic, dlq_topic, group_id,
                                           commit_interval_ms="3600000"))  # fmt: skip
    events = mixed_events(24)
    produce(tansu.bootstrap, in_topic, events)
    outputs = read_topics(tansu.bootstrap, [out_topic, dlq_topic], PARTITIONS, expected=len(events))
    assert len(outputs) == len(events)
    assert proc.stop(signal.SIGTERM, timeout_s=40) == 0, proc.log_tail()
    assert committed_offsets(tansu.bootstrap, group_id, in_topic) == end_offsets(events)
