"""Test-side brokers: a real one-node Apache Kafka (KRaft) run from Maven Central jars.

Tansu (devtools.broker) backs most integration tests; this runner backs the `kafka`-marked ones,
which prove what Tansu cannot: read_committed isolation, watermarks, restarts. See docs/BROKERS.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import pytest

# The runner lives in devtools (the bench starts Kafka too); its names stay importable from here.
from devtools.apache_kafka import (  # noqa: F401
    KAFKA_POM_DIR,
    KAFKA_VERSION,
    ApacheKafka,
    KafkaUnavailable,
    check_tools,
    fetch_kafka_jars,
    kafka_cache_dir,
)

#: Consumer settings for tests that join a group. Tansu's first assignment after subscribe()
#: takes about half of session.timeout.ms (~3 s at 6000, 23 s at the default 45000); 6000 is
#: also real Kafka's minimum. Tests that need no group should assign() partitions instead.
GROUP_CONSUMER_CONFIG: dict[str, str | int] = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}

#: `topic_factory(bootstrap, partitions=1, prefix="t") -> topic name` (fixture in conftest.py).
TopicFactory = Callable[..., str]


class Cluster(Protocol):
    """What a test may rely on from any broker fixture."""

    @property
    def bootstrap(self) -> str:
        """The `bootstrap.servers` string."""
        ...


class RestartableCluster(Cluster, Protocol):
    """What the `apache_kafka` fixture gives: a cluster a test may restart (or crash and restart)."""

    def restart(self, *, kill: bool = False) -> None:
        """Stop (SIGKILL with `kill`) and start again with the same address and data."""
        ...


@dataclass(frozen=True)
class ExternalCluster:
    """A cluster someone else runs (named by an env override): we only know its bootstrap."""

    bootstrap: str
    env_var: str

    def restart(self, *, kill: bool = False) -> None:
        """An external cluster cannot be restarted from here: skip the test that asked."""
        pytest.skip(f"broker restart needs the locally started Kafka; {self.env_var} points elsewhere")
