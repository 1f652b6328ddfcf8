"""A real one-node Apache Kafka (KRaft) run from Maven Central jars: for the `kafka` tests and the bench.

The latency and goodput bench stages run on it because the embedded broker (Tansu) holds every fetch for
fetch.wait.max.ms, so latency measured through Tansu is partly the broker's. Needs Java 17 and Maven;
`KafkaUnavailable` says why when they (or the network, on the first fetch) are missing. See docs/BROKERS.md.
"""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from devtools.broker import broker_answers, free_port, log_tail, stop_process
from devtools.runner import PROJECT_ROOT

logger = logging.getLogger(__name__)

#: The Apache Kafka release the `kafka` tests run against (tests/kafka/pom.xml's default too).
KAFKA_VERSION = "4.1.1"
KAFKA_POM_DIR = PROJECT_ROOT / "tests" / "kafka"  # pom.xml and log4j2.properties
# Named in full: a bare `dependency:` prefix needs plugin-group metadata that an offline or
# mirror-only Maven may lack.
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

_SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={log_dir}
# One node: the internal topics must have replication factor 1, or groups and transactions never start.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.io.threads=2
log.cleaner.dedupe.buffer.size=16777216
"""
_JVM_FLAGS = ["-Xms512m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"]


class KafkaUnavailable(RuntimeError):
    """Real Kafka cannot run here (no Java 17 / Maven, or the jars cannot be fetched).

    Tests skip on it (or, under CI=true, fail); the bench says why and stops.
    """


def kafka_cache_dir(version: str = KAFKA_VERSION) -> Path:
    """Where the jars of `version` live: $DFP_TEST_KAFKA_CACHE (or ~/.cache/deepfake-processor)/kafka-<version>."""
    root = os.environ.get("DFP_TEST_KAFKA_CACHE") or Path.home() / ".cache" / "deepfake-processor"
    return Path(root) / f"kafka-{version}"


def check_tools(version: str = KAFKA_VERSION) -> None:
    """Raise KafkaUnavailable unless `java` (17 or newer) is on PATH, and `mvn` too while the jars are not cached.

    A host without network (a GPU node) can run the broker from a copied jar cache and a Java runtime alone.
    """
    needed = ("java",) if (kafka_cache_dir(version) / "libs.complete").exists() else ("java", "mvn")
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        raise KafkaUnavailable(f"real Apache Kafka tests need Java 17 + Maven (not found on PATH): {missing}")
    out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=60).stderr
    match = re.search(r'version "(\d+)', out)
    if match is None or int(match.group(1)) < 17:
        raise KafkaUnavailable(f"real Apache Kafka 4.x needs Java 17 or newer, found: {out.strip()[:200]}")


def fetch_kafka_jars(version: str = KAFKA_VERSION, *, timeout_s: float = 480.0) -> Path:
    """Return the directory of the broker's jars, fetching them with Maven once per version.

    A lock file serialises concurrent pytest processes; a marker file makes a half-done fetch
    (killed mid-way) count as absent.
    """
    cache = kafka_cache_dir(version)
    libs, done = cache / "libs", cache / "libs.complete"
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return libs
        shutil.rmtree(libs, ignore_errors=True)
        cmd = [
            "mvn",
            "-B",
            "-q",
            "-Dstyle.color=never",
            "-f",
            str(KAFKA_POM_DIR / "pom.xml"),
            f"-Dkafka.version={version}",
            _DEPENDENCY_PLUGIN + ":copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={libs}",
        ]
        started = time.monotonic()
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise KafkaUnavailable(f"fetching Kafka {version} jars took over {timeout_s:.0f} s") from exc
        if result.returncode != 0:
            output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
            (cache / "fetch.log").write_text(output)
            first_error = next((line for line in output.splitlines() if line.startswith("[ERROR]")), output[-300:])
            raise KafkaUnavailable(
                f"cannot fetch Kafka {version} jars from Maven Central (mvn exit {result.returncode}; "
                f"no network?): {first_error.strip()[:300]} (full output: {cache / 'fetch.log'})"
            )
        done.write_text(f"{version}\n")
        logger.info("fetched Kafka %s jars into %s in %.1f s", version, libs, time.monotonic() - started)
        return libs


def _cluster_id() -> str:
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # the CLI would read it as an option
            return cid


class ApacheKafka:
    """One combined broker+controller KRaft node on two free loopback ports, stopped by PID."""

    def __init__(self, libs: Path, workdir: Path) -> None:
        self.libs = libs
        self.workdir = workdir
        self.port = free_port()
        self.controller_port = free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        self.log_path = workdir / "broker.log"
        self._config = workdir / "server.properties"
        self._proc: subprocess.Popen[bytes] | None = None
        self._formatted = False

    @property
    def bootstrap(self) -> str:
        """The `bootstrap.servers` string of this broker."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The JVM's process id while it runs, else None."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _java(self, main: str, *args: str, jvm: list[str] | None = None) -> list[str]:
        log4j = f"-Dlog4j2.configurationFile={KAFKA_POM_DIR / 'log4j2.properties'}"
        return ["java", *(jvm or []), log4j, "-cp", f"{self.libs}/*", main, *args]

    def _format(self) -> None:
        log_dir = self.workdir / "data"
        self._config.write_text(
            _SERVER_PROPERTIES.format(port=self.port, controller=self.controller_port, log_dir=log_dir)
        )
        cmd = self._java(
            "kafka.tools.StorageTool", "format", "--standalone", "-t", _cluster_id(), "-c", str(self._config)
        )
        with self.log_path.open("ab") as log:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=120).returncode
        if code != 0:
            raise RuntimeError(f"kafka StorageTool format exited {code}:\n{log_tail(self.log_path)}")
        self._formatted = True

    def start(self, timeout_s: float = 90.0) -> None:
        """Format the store on first use, start the JVM, return once a metadata request is answered."""
        if self.pid is not None:
            return
        started = time.monotonic()
        if not self._formatted:
            self._format()
        cmd = self._java("kafka.Kafka", str(self._config), jvm=_JVM_FLAGS)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        while time.monotonic() - started < timeout_s:
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                raise RuntimeError(
                    f"Kafka exited {code} during start-up; log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if broker_answers(self.bootstrap, timeout_s=1.0):
                logger.info("Kafka %s ready on %s in %.1f s", KAFKA_VERSION, self.bootstrap, time.monotonic() - started)
                return
            time.sleep(0.2)
        self.stop(kill=True)
        raise RuntimeError(
            f"Kafka did not answer on {self.bootstrap} within {timeout_s:.0f} s; "
            f"log {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def stop(self, timeout_s: float = 30.0, *, kill: bool = False) -> None:
        """Stop the JVM by PID: SIGTERM (a clean shutdown), wait, then SIGKILL. `kill=True` crashes it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, timeout_s, sig=signal.SIGKILL if kill else signal.SIGTERM)

    def restart(self, *, kill: bool = False, timeout_s: float = 90.0) -> None:
        """Stop (or crash, with `kill`) and start again on the same ports and log dir; data survives."""
        self.stop(kill=kill)
        self.start(timeout_s=timeout_s)
