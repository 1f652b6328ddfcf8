"""Integration fixtures: a factory for real processor subprocesses (every one stopped by PID at teardown)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.procs import ProcessorProc, new_processor

ProcessorFactory = Callable[..., ProcessorProc]


@pytest.fixture
def processor_factory(tmp_path: Path) -> Iterator[ProcessorFactory]:
    """`processor_factory(env, start=True, ready=True, name="p")` → a running ProcessorProc."""
    started: list[ProcessorProc] = []

    def make(env: dict[str, str], *, start: bool = True, ready: bool = True, name: str = "processor",
             args: list[str] | None = None) -> ProcessorProc:  # fmt: skip
        proc = new_processor(env, tmp_path, name)
        proc.extra_args = list(args or [])
        started.append(proc)  # torn down below even when the test starts (or restarts) it itself
        if start:
            proc.start()
            if ready:
                proc.wait_ready()
        return proc

    yield make
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.stop(timeout_s=40)
