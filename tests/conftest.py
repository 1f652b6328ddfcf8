"""Session brokers and per-test topic/group fixtures shared by the whole suite.

Two brokers (docs/BROKERS.md):

- `tansu`: the embedded Tansu broker, one per session, for every integration test. Set
  `DFP_TEST_BOOTSTRAP=host:port` to run those tests against an external cluster instead.
- `apache_kafka`: a real one-node Apache Kafka, started lazily (only when a `kafka`-marked test asks)
  from Maven Central jars; skipped with the reason when Java 17 / Maven / the network are missing,
  except under `CI=true`, where such a test fails with that reason (real-Kafka tests never silently skip in CI).
  Set `KAFKA_BOOTSTRAP=host:port` to use an external cluster (then `restart()` skips the test).

Consumer groups on Tansu: the first assignment after subscribe() takes about half of
session.timeout.ms, so tests that join a group use `tests.brokers.GROUP_CONSUMER_CONFIG`
(`session.timeout.ms=6000`, `heartbeat.interval.ms=500`) and do not close() a consumer whose join is
still pending; tests that need no group assign() partitions and skip the join. Never build a test
on Tansu's read_committed or watermarks (both wrong there); mark such tests `kafka` instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import NoReturn

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from devtools.broker import EmbeddedBroker, create_topics
from tests.brokers import (
    ExternalCluster,
    KafkaUnavailable,
    TestKafka,
    TopicFactory,
    check_tools,
    fetch_kafka_jars,
)


def in_ci() -> bool:
    """True under `CI=true` (as CI services and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def kafka_unavailable(reason: str) -> NoReturn:
    """Skip a real-Kafka test whose broker cannot run here, or fail it under CI=true, naming the reason."""
    if in_ci():
        pytest.fail(f"CI=true and real Apache Kafka is unavailable: {reason} (install Java 17 + Maven)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker | ExternalCluster]:
    """The embedded Tansu broker (memory storage) for the session, or $DFP_TEST_BOOTSTRAP's cluster."""
    external = os.environ.get("DFP_TEST_BOOTSTRAP")
    if external:
        yield ExternalCluster(external, "DFP_TEST_BOOTSTRAP")
        return
    broker = EmbeddedBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def apache_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestKafka | ExternalCluster]:
    """A real one-node Apache Kafka for the session (started on first use), or $KAFKA_BOOTSTRAP's cluster."""
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield ExternalCluster(external, "KAFKA_BOOTSTRAP")
        return
    try:
        check_tools()
        libs = fetch_kafka_jars()
    except KafkaUnavailable as exc:
        kafka_unavailable(str(exc))
    kafka = TestKafka(libs, tmp_path_factory.mktemp("kafka"))
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture
def topic_factory() -> TopicFactory:
    """Create a fresh uuid-named topic: `topic_factory(bootstrap, partitions=1, prefix="t", config=None) -> name`.

    `config` sets topic configs at creation (e.g. {"max.message.bytes": "1048588"}).
    """

    def make(bootstrap: str, partitions: int = 1, prefix: str = "t", config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        if config:
            admin = AdminClient({"bootstrap.servers": bootstrap})
            new = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)
            admin.create_topics([new])[name].result(30)
        create_topics(bootstrap, [name], partitions)  # waits until metadata shows it (an existing topic is fine)
        return name

    return make


@pytest.fixture
def group_id() -> str:
    """A consumer group id no other test uses."""
    return f"g-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def no_dfp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DFP_* variable of the caller's shell leaks into an in-process command (the bench reads settings)."""
    for name in list(os.environ):
        if name.upper().startswith("DFP_"):
            monkeypatch.delenv(name)
