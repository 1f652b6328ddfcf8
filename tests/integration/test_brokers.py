"""The test brokers themselves: Tansu carries groups end to end; real Kafka adds what Tansu cannot show."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from devtools.broker import EmbeddedBroker, create_topics
from tests.brokers import GROUP_CONSUMER_CONFIG, Cluster, RestartableCluster, TopicFactory


def produce(bootstrap: str, topic: str, values: list[bytes], **config: Any) -> None:
    """Produce `values` (idempotent, keyed by index) and fail on any delivery error."""
    errors: list[KafkaError | None] = []
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, **config})
    for i, value in enumerate(values):
        producer.produce(topic, value, key=str(i).encode(), on_delivery=lambda err, _msg: errors.append(err))
        producer.poll(0)
    assert producer.flush(30) == 0, "messages left unsent"
    assert not [e for e in errors if e is not None], errors


def consume(consumer: Consumer, count: int, timeout_s: float = 30.0) -> list[Message]:
    """Poll until `count` messages arrived (or the deadline); broker errors fail the test."""
    received: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(received) < count and time.monotonic() < deadline:
        for msg in consumer.consume(count - len(received), timeout=0.5):
            if msg.error() is not None:
                raise KafkaException(msg.error())
            received.append(msg)
    return received


def group_consumer(bootstrap: str, group_id: str, **config: Any) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **GROUP_CONSUMER_CONFIG,
            **config,
        }
    )


def assigned_consumer(bootstrap: str, topic: str, **config: Any) -> Consumer:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"a-{uuid.uuid4().hex[:8]}", **config})
    consumer.assign([TopicPartition(topic, 0, 0)])
    return consumer


def roundtrip_through_group(bootstrap: str, topic: str, group_id: str, n: int = 100) -> None:
    values = [f"m{i}".encode() for i in range(n)]
    produce(bootstrap, topic, values)
    consumer = group_consumer(bootstrap, group_id)
    consumer.subscribe([topic])
    try:
        received = consume(consumer, n)
        assert sorted(m.value() or b"" for m in received) == sorted(values)
        consumer.commit(asynchronous=False)
        committed = consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
        assert sum(tp.offset for tp in committed) == n
    finally:
        consumer.close()


def test_tansu_group_consumer_receives_all_100_produced_messages(
    tansu: Cluster, topic_factory: TopicFactory, group_id: str
) -> None:
    topic = topic_factory(tansu.bootstrap, partitions=3)
    roundtrip_through_group(tansu.bootstrap, topic, group_id)


def test_create_topics_ignores_existing_topic_and_shows_its_partitions(tansu: Cluster) -> None:
    topic = f"t-{uuid.uuid4().hex[:12]}"
    create_topics(tansu.bootstrap, [topic], partitions=4)
    create_topics(tansu.bootstrap, [topic], partitions=4)
    consumer = Consumer({"bootstrap.servers": tansu.bootstrap, "group.id": "unused"})
    try:
        assert len(consumer.list_topics(topic, timeout=5).topics[topic].partitions) == 4
    finally:
        consumer.close()


def test_embedded_broker_stops_by_pid_and_frees_its_port() -> None:
    broker = EmbeddedBroker()
    with broker:
        pid = broker.pid
        assert pid is not None
    assert broker.pid is None
    with EmbeddedBroker(broker.port) as again:  # the same port is free again
        assert again.pid not in (None, pid)


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_group_consumer_receives_all_100_produced_messages(
    apache_kafka: Cluster, topic_factory: TopicFactory, group_id: str
) -> None:
    topic = topic_factory(apache_kafka.bootstrap, partitions=3)
    roundtrip_through_group(apache_kafka.bootstrap, topic, group_id)


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_read_committed_hides_aborted_transaction_and_shows_committed(
    apache_kafka: Cluster, topic_factory: TopicFactory
) -> None:
    bootstrap = apache_kafka.bootstrap
    topic = topic_factory(bootstrap)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(30)
    for outcome in ("aborted", "committed"):
        producer.begin_transaction()
        for i in range(5):
            producer.produce(topic, f"{outcome}-{i}".encode())
        if outcome == "aborted":
            assert producer.flush(30) == 0  # abort_transaction() would purge unsent records: write them first
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)

    committed_reader = assigned_consumer(bootstrap, topic, **{"isolation.level": "read_committed"})
    raw_reader = assigned_consumer(bootstrap, topic, **{"isolation.level": "read_uncommitted"})
    try:
        visible = [m.value() for m in consume(committed_reader, 5)]
        assert visible == [f"committed-{i}".encode() for i in range(5)]
        assert consume(committed_reader, 1, timeout_s=2) == []  # nothing aborted trails behind
        raw = [m.value() for m in consume(raw_reader, 10)]
        assert raw[:5] == [f"aborted-{i}".encode() for i in range(5)]  # they are in the log, only hidden
    finally:
        committed_reader.close()
        raw_reader.close()


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_high_watermark_equals_number_of_produced_messages(
    apache_kafka: Cluster, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(apache_kafka.bootstrap)
    for batch in range(4):  # several batches: Tansu reports first-offset-of-last-batch + 1 here
        produce(apache_kafka.bootstrap, topic, [f"b{batch}-{i}".encode() for i in range(25)], **{"linger.ms": 0})
    consumer = assigned_consumer(apache_kafka.bootstrap, topic)
    try:
        assert consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 100)
    finally:
        consumer.close()


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_restart_on_same_ports_keeps_messages(
    apache_kafka: RestartableCluster, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(apache_kafka.bootstrap)
    values = [f"r{i}".encode() for i in range(10)]
    produce(apache_kafka.bootstrap, topic, values)
    apache_kafka.restart()
    consumer = assigned_consumer(apache_kafka.bootstrap, topic)
    try:
        assert [m.value() for m in consume(consumer, 10)] == values
    finally:
        consumer.close()
