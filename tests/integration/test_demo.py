"""`deepfake-processor demo` (README): embedded broker + processor + sample producer, prints outputs, exits 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_prints_results_and_dead_letters_and_exits_zero() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFP_")}
    done = subprocess.run(
        [sys.executable, "-m", "processor", "demo", "--count", "20", "--http-port", "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, f"stdout:\n{out}\nstderr:\n{done.stderr[-3000:]}"
    results = [line for line in out.splitlines() if line.startswith("RESULT ")]
    dead = [line for line in out.splitlines() if line.startswith("DLQ ")]
    assert len(results) + len(dead) >= 20, out
    assert results and dead, out  # the sample stream mixes in a bad event every 7th
    assert all(re.search(r"fake_score=\d\.\d{4}", line) for line in results)
    assert all("code=" in line for line in dead)
    # --http-port 0 picks a free port: the printed URLs carry a real one.
    port = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", out)
    assert port is not None and int(port.group(1)) > 0, out
    assert "processor exited with 0" in out


def test_ctrl_c_drains_the_processor_once_and_the_demo_exits_zero() -> None:
    """A terminal's Ctrl-C sends SIGINT to the whole foreground group: the processor must get one signal only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFP_")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "processor", "demo", "--http-port", "0", "--rate", "50"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group, so the SIGINT below reaches the demo's group like a terminal's
    )
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line)
            if line.startswith(("RESULT ", "DLQ ")):
                break
        assert any(line.startswith(("RESULT ", "DLQ ")) for line in lines), "".join(lines)
        os.killpg(demo.pid, signal.SIGINT)
        rest, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    out = "".join(lines) + rest
    assert demo.returncode == 0, out
    assert "processor exited with 0" in out, out
    # The processor got exactly one signal, the demo's SIGTERM, not the terminal's SIGINT as well.
    log_path = re.search(r"processor log: (\S+)", out)
    assert log_path is not None, out
    signals = [line for line in Path(log_path.group(1)).read_text().splitlines() if "signal received" in line]
    assert len(signals) == 1 and "SIGTERM" in signals[0], signals
