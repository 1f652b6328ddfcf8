"""`deepfake-processor soak` (quick): the long-run harness samples the processor and accounts for every event."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_soak_samples_rss_threads_fds_and_backlog_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "processor", "soak", "--minutes", "0.15", "--sample-s", "1", "--warmup-s", "2",
         "--calibrate-events", "200", "--broker", "tansu", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["accounting"]["lost"] == 0 and result["accounting"]["duplicates"] == 0
    assert result["accounting"]["outputs"] == result["accounting"]["sent"] > 200
    assert result["calibration"]["max_events_per_s"] > 0
    assert len(result["samples"]) >= 5
    first = result["samples"][0]
    assert first["rss_mb"] > 0 and first["threads"] > 1 and first["open_fds"] > 0
    assert result["processor_exit_code"] == 0
