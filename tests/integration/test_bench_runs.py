"""`deepfake-processor bench` runs that start a broker and processors: every stage through the embedded broker,
and the goodput/partitions stages (the quick versions: JSON shape and report, never performance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
def test_quick_goodput_and_partitions_on_the_embedded_broker_write_the_json_shape(tmp_path: Path) -> None:
    out, md = tmp_path / "goodput.json", tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nBy hand.\n")
    code = main(["bench", "--quick", "--no-progress", "--stages", "goodput,partitions", "--broker", "tansu",
                 "--policies", "slo", "--partitions", "1", "--json", str(out), "--markdown", str(md),
                 "--plot-dir", str(tmp_path / "img")])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    goodput = result["goodput"]
    assert goodput["max_images_per_s"] > 0 and goodput["max_images_per_s_after"] > 0
    assert set(goodput["policies"]) == {"slo"}
    rows = goodput["policies"]["slo"]
    assert set(rows) == {"poisson25", "poisson50", "poisson75", "poisson90", "bursty", "final"}
    for name in goodput["traces"]:
        row = rows[name]
        assert row["events"] == goodput["plan"]["samples"] and 0 < row["p50_ms"] <= row["p99_ms"]
        assert 0 <= row["within_slo"] <= row["events"] and row["goodput_per_s"] >= 0
    assert result["partitions"]["images_per_s"]["1"] > 0 and result["partitions"]["ratio_1_over_6"] > 0
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nBy hand.") and "bench:goodput-vit-tiny:begin" in text
    assert (tmp_path / "img" / "goodput-vit-tiny.png").stat().st_size > 0
