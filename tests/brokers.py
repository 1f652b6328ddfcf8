"""Test-side brokers: a real one-node Apache Kafka (KRaft) run from Maven Central jars.

Tansu (devtools.broker) backs most integration tests; this runner backs the `kafka`-marked ones,
which prove what Tansu cannot: read_committed isolation, watermarks, restarts. See docs/BROKERS.md.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from devtools import apache_kafka

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
from devtools.broker import log_tail

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


#: Appended to the runner's server.properties for tests (a later key overrides an earlier one in Java properties).
TEST_SERVER_PROPERTIES = """
# Tests are short: abort a dead producer's open transaction soon after its transaction.timeout.ms.
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
# KIP-848 groups (group.protocol=consumer): the broker owns heartbeats and sessions; shorten them for tests.
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=1000
group.consumer.min.session.timeout.ms=6000
group.consumer.session.timeout.ms=10000
"""


class TestKafka(ApacheKafka):
    """The `kafka` tests' broker: the runner's node plus test-speed settings, and optional extra server settings
    and `StorageTool format` arguments (the secured broker of test_security.py adds listeners and SCRAM users).

    Args:
        libs: The broker's jars (`fetch_kafka_jars`).
        workdir: A fresh directory for config, data and log.
        extra_properties: A function of this broker (its ports are known by then) returning server.properties lines.
        format_args: Extra `StorageTool format` arguments (e.g. `--add-scram ...`).
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, libs: Path, workdir: Path, *, extra_properties: Callable[[TestKafka], str] | None = None,
                 format_args: list[str] | None = None) -> None:  # fmt: skip
        super().__init__(libs, workdir)
        self._extra_properties = extra_properties
        self._format_args = list(format_args or [])

    def _format(self) -> None:
        text = apache_kafka._SERVER_PROPERTIES.format(
            port=self.port, controller=self.controller_port, log_dir=self.workdir / "data"
        )
        text += TEST_SERVER_PROPERTIES + (self._extra_properties(self) if self._extra_properties else "")
        self._config.write_text(text)
        cmd = self._java("kafka.tools.StorageTool", "format", "--standalone", "-t", apache_kafka._cluster_id(),
                         "-c", str(self._config), *self._format_args)  # fmt: skip
        with self.log_path.open("ab") as log:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=120).returncode
        if code != 0:
            raise RuntimeError(f"kafka StorageTool format exited {code}:\n{log_tail(self.log_path)}")
        self._formatted = True
