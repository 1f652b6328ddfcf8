"""`deepfake-processor bench`: the result JSON keeps its fixed keys and the Markdown section only replaces itself.

Smoke runs only (`--quick`): no wall-clock figure is asserted beyond "measured and positive".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.report import ratios, slo_table, targets, write_section
from bench.workload import iter_events, relabelled
from tests.procs import run_bench

FIXED_KEYS = (
    "decode_only_images_per_s",
    "model_only_images_per_s",
    "pipeline_ceiling_images_per_s",
    "e2e_images_per_s",
    "baseline_images_per_s",
    "latency",
    "peak_rss_mb",
    "gpu_memory_mb",
    "machine",
    "settings",
    "ratios",
    "targets_met",
)


pytestmark = pytest.mark.usefixtures("no_dfp_env")


def test_quick_bench_without_kafka_writes_fixed_keys_and_markdown_table(tmp_path: Path) -> None:
    result, md = run_bench(tmp_path, "--skip", "pipeline,baseline,e2e,latency,slo", "--batch-sizes", "1,4")
    assert all(key in result for key in FIXED_KEYS)
    assert result["decode_only_images_per_s"] > 0
    rates = result["model_only_images_per_s"]["fp32"]
    assert set(rates) == {"1", "4"} and all(r > 0 for r in rates.values())
    assert result["e2e_images_per_s"] is None and result["latency"] is None
    assert result["machine"]["gpu"] and result["machine"]["versions"]["onnxruntime"]
    assert result["targets_met"]["e2e_ge_0.8x_pipeline_ceiling"] is None
    assert "| decode only |" in md and "b=4" in md and "old" not in md
    assert md.startswith("# Benchmarks\n\nAnalysis written by hand.") and md.rstrip().endswith("More analysis.")
    assert (tmp_path / "img" / "bench-vit-tiny.png").stat().st_size > 0


def test_ratios_and_targets_follow_the_measured_rates() -> None:
    result: dict[str, Any] = {
        "e2e_images_per_s": 90.0,
        "pipeline_ceiling_images_per_s": 100.0,
        "bare_ceiling_images_per_s": 120.0,
        "baseline_images_per_s": 30.0,
        "model_only_images_per_s": {"int8": {"8": 95.0}},
    }
    result["ratios"] = ratios(result)
    assert result["ratios"] == {"e2e/pipeline_ceiling": 0.9, "e2e/bare_ceiling": 0.75, "e2e/baseline": 3.0,
                                "e2e/model_only_best": 0.947}  # fmt: skip
    met = {t["name"]: t["met"] for t in targets(result, full_size=True, gpu=False)}
    assert met["e2e_ge_0.8x_pipeline_ceiling"] is True
    assert met["e2e_ge_0.9x_model_only_best"] is True
    assert met["e2e_ge_1.1x_baseline"] is True
    assert all(value is None for name, value in met.items() if name.startswith("gpu_"))
    tiny = {t["name"]: t["met"] for t in targets(result, full_size=False, gpu=False)}
    assert tiny["e2e_ge_2x_baseline"] is True


def test_slo_rows_compare_fixed_and_adaptive_batching_against_the_target() -> None:
    latency = {"50": {"p99_ms": 80.0}, "75": {"p99_ms": 140.0}}
    result: dict[str, Any] = {
        "e2e_images_per_s": 200.0,
        "latency": {"25": {"p99_ms": 30.0}, **latency},
        "settings": {"max_batch_size": 32, "max_batch_wait_ms": 5.0},
        "slo": {
            "plan": {"max_batch_size": 64, "max_batch_wait_ms": 50.0, "latency_target_ms": 100.0},
            "reference_images_per_s": 200.0,
            "configs": {
                "fixed": {"images_per_s": 210.0, "latency": {"50": {"p99_ms": 180.0}, "75": {"p99_ms": 260.0}}},
                "slo": {
                    "images_per_s": 205.0,
                    "latency": {"50": {"p99_ms": 60.0}, "75": {"p99_ms": 99.0}},
                    "final_batch_limit": 12.0,
                    "final_batch_wait_ms": 1.5,
                },
            },
        },
    }
    result["ratios"] = ratios(result)
    met = {t["name"]: t["met"] for t in targets(result, full_size=False, gpu=False)}
    assert met["slo_p99_le_target_at_50pct_load"] is True and met["slo_p99_le_target_at_75pct_load"] is True
    result["slo"]["configs"]["slo"]["latency"]["75"]["p99_ms"] = 101.0
    met = {t["name"]: t["met"] for t in targets(result, full_size=False, gpu=False)}
    assert met["slo_p99_le_target_at_75pct_load"] is False
    table = "\n".join(slo_table(result))
    assert "| fixed, the bench's settings (e2e and latency above) | 32 | 5.0 | 200.0 | 80.0 | 140.0 | **no** |" in table
    assert "| fixed, roomy bounds | 64 | 50.0 | 210.0 | 180.0 | 260.0 | **no** | — |" in table
    assert "12 / 1.50 ms |" in table


def test_paced_events_are_copies_of_the_pool_under_fresh_ids() -> None:
    pool = list(iter_events(5, [(64, 48)], ["jpeg"]))
    copies = list(relabelled(pool, 12, "lat50"))
    ids = [json.loads(e.value)["event_id"] if e.kind == "json" else dict(e.headers)["event_id"].decode()
           for e in copies]  # fmt: skip
    assert ids == [f"lat50-{n}" for n in range(12)]
    for n, copy in enumerate(copies):
        original = pool[n % 5]
        if copy.kind == "json":
            doc, before = json.loads(copy.value), json.loads(original.value)
            assert doc.pop("event_id") != before.pop("event_id") and doc == before
        else:
            assert copy.value is original.value and copy.key == original.key


def test_markdown_section_is_appended_once_then_replaced_in_place(tmp_path: Path) -> None:
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\nintro\n")
    write_section(md, "vit-b16", "first")
    write_section(md, "vit-tiny", "tiny")
    write_section(md, "vit-b16", "second")
    text = md.read_text()
    assert text.count("bench:vit-b16:begin") == 1 and "second" in text and "first" not in text
    assert text.index("intro") < text.index("second") < text.index("tiny")
