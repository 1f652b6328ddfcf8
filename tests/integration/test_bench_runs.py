"""`deepfake-processor bench` runs that start a broker and processors: every stage through the embedded broker,
and the goodput/partitions stages (the quick versions: JSON shape and report, never performance)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench.goodput import SPLIT
from processor.cli import main
from tests.procs import run_bench

pytestmark = pytest.mark.usefixtures("no_dfp_env")


@pytest.mark.slow
def test_quick_bench_through_the_embedded_broker_measures_every_stage(tmp_path: Path) -> None:
    result, md = run_bench(tmp_path, "--batch-sizes", "1,8", "--partitions", "1")
    for key in ("decode_only_images_per_s", "pipeline_ceiling_images_per_s", "e2e_images_per_s",
                "baseline_images_per_s", "peak_rss_mb"):  # fmt: skip
        assert result[key] > 0, key
    assert set(result["latency"]) == {"25", "50", "75"}
    for row in result["latency"].values():
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    assert all(value is not None and value > 0 for value in result["ratios"].values())
    assert isinstance(result["targets_met"]["e2e_ge_2x_baseline"], bool)
    assert "end to end (Kafka)" in md and "p99" in md
    slo = result["slo"]
    assert set(slo["configs"]) == {"fixed", "slo"} and slo["plan"]["latency_target_ms"] >= 50
    for config in slo["configs"].values():
        assert config["images_per_s"] > 0 and set(config["latency"]) == {"50", "75"}
        assert all(row["events"] > 0 and row["p99_ms"] > 0 for row in config["latency"].values())
    assert slo["configs"]["slo"]["final_batch_limit"] >= 1  # the controller's gauge, scraped from /metrics
    assert isinstance(result["targets_met"]["slo_p99_le_target_at_75pct_load"], bool)
    assert "SLO-adaptive" in md


@pytest.mark.slow
def test_quick_goodput_and_partitions_on_two_models_in_one_run_write_the_json_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # --also-arch builds ViT-Ti into ~/.cache: this test's own
    out, md = tmp_path / "goodput.json", tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nBy hand.\n")
    code = main(["bench", "--quick", "--no-progress", "--stages", "goodput,partitions", "--broker", "tansu",
                 "--policies", "fixed:8/2,slo", "--also-arch", "vit-ti16", "--partitions", "1", "--json", str(out),
                 "--markdown", str(md), "--plot-dir", str(tmp_path / "img")])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["partitions"]["images_per_s"]["1"] > 0 and result["partitions"]["ratio_1_over_6"] > 0
    (ti,) = result["also"]
    assert result["settings"]["label"] == "vit-tiny" and ti["settings"]["label"] == "vit-ti16"
    assert ti["settings"]["served_variant"] == "int8"
    for goodput in (result["goodput"], ti["goodput"]):
        assert goodput["max_images_per_s"] > 0 and goodput["max_images_per_s_after"] > 0
        # A fixed column at bounds of its own runs on topics named after it (Kafka names take no ':' or '/').
        assert set(goodput["policies"]) == {"fixed:8/2", "slo"}
        assert goodput["policies"]["fixed:8/2"]["poisson25"]["events"] == goodput["plan"]["samples"]
        rows = goodput["policies"]["slo"]
        assert set(rows) == {"poisson25", "poisson50", "poisson75", "poisson90", "bursty", "final"}
        for name in goodput["traces"]:
            row = rows[name]
            assert row["events"] == goodput["plan"]["samples"] and 0 < row["p50_ms"] <= row["p99_ms"]
            assert 0 <= row["within_slo"] <= row["events"] and row["goodput_per_s"] >= 0
            assert list(row["p99_split_ms"]) == list(SPLIT) and row["p99_split_ms"]["decode"] > 0
    # The two models' saturated rates differ (ViT-Ti is ~5x slower): each trace is set from its own model's.
    assert ti["goodput"]["max_images_per_s"] < result["goodput"]["max_images_per_s"]
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nBy hand.") and "bench:goodput-vit-tiny+vit-ti16:begin" in text
    assert "**vit-tiny** (fp32)" in text and "**vit-ti16** (int8)" in text
    assert "| fixed 8 / 2 ms | **slo (ours)** |" in text and "Targets, computed from this run:" in text
    assert (tmp_path / "img" / "goodput-vit-tiny+vit-ti16.png").stat().st_size > 0


def test_also_arch_without_the_goodput_stage_is_refused(tmp_path: Path) -> None:
    code = main(["bench", "--quick", "--no-progress", "--stages", "partitions", "--also-arch", "vit-ti16",
                 "--json", str(tmp_path / "x.json"), "--markdown", "", "--plot-dir", ""])  # fmt: skip
    assert code == 2 and not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_a_bench_stopped_with_sigterm_stops_the_broker_and_processor_it_started(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "processor", "bench", "--quick", "--no-progress", "--stages", "e2e",
           "--json", str(tmp_path / "x.json"), "--markdown", "", "--plot-dir", ""]  # fmt: skip
    bench = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and bench.poll() is None:
            children = psutil.Process(bench.pid).children(recursive=True)
            if any("run" in child.cmdline() for child in children if child.is_running()):
                break  # the processor is up, and the broker before it
            time.sleep(0.2)
        assert any("run" in child.cmdline() for child in children), "the bench never started its processor"
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=90) == 130
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, [child.cmdline() for child in alive]
    finally:  # whatever failed above, nothing outlives the test
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        for child in children:
            if child.is_running():
                child.kill()


@pytest.mark.slow
def test_processor_cpus_pin_the_ceilings_and_the_processor_and_keep_the_broker_off_them(tmp_path: Path) -> None:
    usable = os.sched_getaffinity(0)
    result, _ = run_bench(tmp_path, "--stages", "bare,e2e", "--processor-cpus", "0")
    assert result["settings"]["processor_cpus"] == [0]
    assert result["extra"]["processor_affinity"] == [0]  # read from the kernel once the processor was ready
    assert result["bare_ceiling_images_per_s"] > 0 and result["e2e_images_per_s"] > 0
    assert os.sched_getaffinity(0) == usable  # the bench ran in this process: its CPUs are given back


@pytest.mark.slow
def test_processor_cpus_must_leave_a_cpu_for_the_broker(tmp_path: Path) -> None:
    every = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
    code = main(["bench", "--quick", "--no-progress", "--stages", "bare", "--processor-cpus", every,
                 "--json", str(tmp_path / "x.json"), "--markdown", "", "--plot-dir", ""])  # fmt: skip
    assert code == 2 and not (tmp_path / "x.json").exists()
