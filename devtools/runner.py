"""One `python -m processor run` child process: start it, ask its HTTP port, wait until ready, stop it by PID.

Shared by the bench (`bench.e2e`) and the integration tests (`tests/procs.py`), so both drive the
real service the same way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from devtools.broker import EMBEDDED_CLIENT_ENV, stop_process

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def processor_env(bootstrap: str, input_topic: str, output_topic: str, dlq_topic: str, group: str,
                  **settings: str) -> dict[str, str]:  # fmt: skip
    """A child processor's environment: the caller's without its DFP_* variables, plus these settings.

    `settings` are setting names (any case) → values, e.g. `MAX_BATCH_SIZE="4"` → DFP_MAX_BATCH_SIZE=4.
    Group settings suit the embedded broker (a ~3 s join) and real Kafka alike; two decode threads unless
    told otherwise.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFP_")}
    # `-m processor` must import this checkout whatever the caller's directory.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(EMBEDDED_CLIENT_ENV)
    env.update({"DFP_BOOTSTRAP_SERVERS": bootstrap, "DFP_INPUT_TOPIC": input_topic, "DFP_OUTPUT_TOPIC": output_topic,
                "DFP_DLQ_TOPIC": dlq_topic, "DFP_GROUP_ID": group, "DFP_HTTP_HOST": "127.0.0.1",
                "DFP_LOG_FORMAT": "json", "DFP_DECODE_WORKERS": "2"})  # fmt: skip
    env.update({f"DFP_{k.upper()}": v for k, v in settings.items()})
    return env


def parse_metrics(text: str) -> list[Any]:
    """Every sample of a Prometheus text exposition (prometheus_client `Sample`s: name, labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def metric_samples(text: str, name: str) -> list[float]:
    """Every value of sample `name` (any labels; counters end in `_total`) in a Prometheus text exposition."""
    return [float(sample.value) for sample in parse_metrics(text) if sample.name == name]


@dataclass
class ProcessorProcess:
    """One `python -m processor run` child, logging to `log_path`; always stopped by its own PID."""

    env: dict[str, str]
    log_path: Path
    http_port: int
    proc: subprocess.Popen[bytes] | None = None
    # The project root, so `-m processor` imports this checkout whatever the caller's directory.
    cwd: Path = PROJECT_ROOT
    extra_args: list[str] = field(default_factory=list)
    # In a session of its own, a terminal's Ctrl-C (SIGINT to the whole foreground group) reaches only the
    # parent, which then stops the child with one SIGTERM; a second signal would make it exit without draining.
    own_session: bool = False
    # Pin the child to these CPUs (the bench's --processor-cpus); None: wherever the caller may run.
    cpus: frozenset[int] | None = None

    def start(self) -> Self:
        """Start the child with stdout and stderr appended to `log_path`."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "processor", "run", *self.extra_args], env=self.env,
                                         cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=self.own_session)  # fmt: skip
        if self.cpus is not None:
            # Popen returns once the child has exec'd, still one thread: every thread it starts inherits this.
            os.sched_setaffinity(self.proc.pid, self.cpus)
        return self

    @property
    def pid(self) -> int:
        """The child's process id (RuntimeError before start)."""
        if self.proc is None:
            raise RuntimeError("the processor was never started")
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """Whether the child was started and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def url(self, path: str) -> str:
        """`http://127.0.0.1:<port><path>` on the child's HTTP port."""
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        """GET `path` on the HTTP port: (status, body), error statuses included; OSError if nothing answers."""
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def wait_ready(self, timeout_s: float = 180.0, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Poll /readyz until 200; fail at once, with the log's tail, if the child exits first.

        `cancelled` (checked between polls) lets an interactive caller give up early on Ctrl-C: RuntimeError.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not cancelled():
            if not self.alive:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"processor exited with {code} during start-up:\n{self.log_tail()}")
            if self._ready():
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"processor not ready after {time.monotonic() - deadline + timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def _ready(self) -> bool:
        try:
            return self.get("/readyz", timeout=1.0)[0] == 200
        except OSError:  # the HTTP server is not listening yet
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 40.0) -> int | None:
        """Send `sig` (SIGTERM: drain, commit, leave the group), SIGKILL if it overstays; the exit code.

        None when it was never started.
        """
        return None if self.proc is None else stop_process(self.proc, timeout_s, sig=sig)

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the child's log ("(no log)" when it cannot be read)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
