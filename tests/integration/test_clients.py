"""Output every client reads: results and dead letters are uncompressed by default, so a consumer without
librdkafka or compression codecs (kafka-python, no lz4/zstd/snappy installed) reads them and parses them with the
wire schemas."""

from __future__ import annotations

import time
import warnings

import pytest

from processor.publish import producer_config
from schemas import ScoreResult
from tests.brokers import Cluster, TopicFactory
from tests.corpus import jpeg_bytes
from tests.integration.conftest import ProcessorFactory
from tests.procs import image_event, processor_env, produce_values

with warnings.catch_warnings():  # kafka-python 3.0 loads its protocol schemas with importlib.resources.read_text
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, TopicPartition  # kafka-python, not confluent-kafka


def test_default_producer_config_leaves_outputs_uncompressed_unless_told_otherwise() -> None:
    assert producer_config("b", {}, 1 << 20, None)["compression.type"] == "none"
    assert producer_config("b", {"compression.type": "zstd"}, 1 << 20, None)["compression.type"] == "zstd"


@pytest.mark.filterwarnings("ignore:read_text is deprecated:DeprecationWarning")
def test_a_plain_kafka_python_consumer_reads_results_and_dead_letters(
    tansu: Cluster, topic_factory: TopicFactory, group_id: str, processor_factory: ProcessorFactory
) -> None:
    bootstrap = tansu.bootstrap
    inp, out, dlq = (topic_factory(bootstrap, 1, prefix) for prefix in ("in", "out", "dlq"))
    proc = processor_factory(processor_env(bootstrap, inp, out, dlq, group_id), name="clients")
    values = [image_event(f"py-{i}", jpeg_bytes(64, 64), metadata={"i": i}) for i in range(4)]
    values.append(b'{"event_id": "py-bad", "not": "an image"}')
    produce_values(bootstrap, inp, values)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=1000)  # fmt: skip
    consumer.assign([TopicPartition(out, 0), TopicPartition(dlq, 0)])
    consumer.seek_to_beginning()
    records = []
    deadline = time.monotonic() + 60
    try:
        while len(records) < len(values) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    results = [ScoreResult.model_validate_json(r.value) for r in records if r.topic == out]
    letters = [r for r in records if r.topic == dlq]
    print(f"\nFIGURE clients: kafka-python read {len(results)} results and {len(letters)} dead letters")
    assert sorted(r.event_id for r in results) == [f"py-{i}" for i in range(4)]
    assert [r.metadata for r in sorted(results, key=lambda r: r.event_id)] == [{"i": i} for i in range(4)]
    assert len(letters) == 1 and letters[0].value == values[-1]
    assert dict(letters[0].headers)["error.code"] == b"invalid_schema"
    assert proc.stop() == 0
