"""The goodput stage's report: Markdown tables (goodput, p50 / p99 per policy and trace) and one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.plot import save_figure
from bench.report import fmt

NAMES = {"fixed": "fixed", "triton": "triton", "cork": "cork (BentoML)", "aimd": "aimd (Clipper)",
         "slo": "**slo (ours)**"}  # fmt: skip


def _trace_label(name: str, trace: dict[str, Any], max_rate: float) -> str:
    if name.startswith("poisson"):
        return f"Poisson {name.removeprefix('poisson')} % ({fmt(trace['mean_rate_per_s'])}/s)"
    mean = trace["mean_rate_per_s"]
    return f"bursty, mean {fmt(100 * mean / max_rate, 0)} %, 3x peaks ({fmt(mean)}/s)"


def goodput_tables(result: dict[str, Any], json_name: str | None = None) -> list[str]:
    """Goodput (results within the SLO per second) and p50 / p99 per policy and trace, as Markdown lines."""
    g = result.get("goodput")
    if not g:
        return []
    plan, policies, max_rate = g["plan"], g["policies"], g["max_images_per_s"]
    cols = list(policies)
    source = f" (source: `{json_name}`)" if json_name else ""
    head = "| trace (mean offered rate) | " + " | ".join(NAMES.get(p, p) for p in cols) + " |"
    rule = "|---|" + "---|" * len(cols)
    lines = [f"Saturated rate (fixed, {plan['max_batch_size']} / {fmt(plan['max_batch_wait_ms'])} ms, a backlog of "
             f"{plan['max_events']} events): **{fmt(max_rate)} events/s** before the traces, "
             f"{fmt(g.get('max_images_per_s_after'))} after them; SLO {fmt(plan['latency_target_ms'])} ms "
             f"(output − input Kafka timestamps); every policy shares the bounds {plan['max_batch_size']} rows / "
             f"{fmt(plan['max_batch_wait_ms'])} ms and sees the same seeded traces{source}.", "",
             "Goodput, results within the SLO per second (share of the trace's events within it):", "",
             head, rule]  # fmt: skip
    for name, trace in g["traces"].items():
        cells = [f"{fmt(policies[p][name]['goodput_per_s'])}/s ({fmt(100 * policies[p][name]['within_fraction'], 0)} %)"
                 for p in cols]  # fmt: skip
        lines.append(f"| {_trace_label(name, trace, max_rate)} | " + " | ".join(cells) + " |")
    lines += ["", "Latency p50 / p99 (ms), and the mean batch size:", "", head, rule]
    for name, trace in g["traces"].items():
        cells = [f"{fmt(policies[p][name]['p50_ms'], 0)} / {fmt(policies[p][name]['p99_ms'], 0)} "
                 f"(b={fmt(policies[p][name]['mean_batch_size'])})" for p in cols]  # fmt: skip
        lines.append(f"| {_trace_label(name, trace, max_rate)} | " + " | ".join(cells) + " |")
    lines += _split_table(g, max_rate)
    samples = sorted({policies[p][n]["events"] for p in cols for n in g["traces"]})
    lines += ["", f"Samples per cell: {samples[0]}" + (f"–{samples[-1]}" if samples[-1] != samples[0] else "")
              + " events (one latency each)."]  # fmt: skip
    return lines


def _split_table(g: dict[str, Any], max_rate: float) -> list[str]:
    """Ours: where the slowest 1 % of each trace's events spent their time (absent from older JSONs)."""
    ours = g["policies"].get("slo", {})
    splits = {n: ours[n].get("p99_split_ms") for n in g["traces"] if n in ours}
    if not any(splits.values()):
        return []
    parts = list(next(v for v in splits.values() if v))
    lines = ["", "Ours: where the slowest 1 % of each trace's events spent their time (mean ms; before the processor ="
             " producer, broker and fetch; ordering + produce = held for offset order, produced, acknowledged):", "",
             "| trace | " + " | ".join(parts) + " |", "|---|" + "---:|" * len(parts)]  # fmt: skip
    for name, split in splits.items():
        if split:
            cells = " | ".join(fmt(split[part], 0) for part in parts)
            lines.append(f"| {_trace_label(name, g['traces'][name], max_rate)} | {cells} |")
    return lines


def partitions_lines(result: dict[str, Any], json_name: str | None = None) -> list[str]:
    """The 1-vs-6-partition line: both rates and their ratio against the 0.9 target."""
    p = result.get("partitions")
    if not p:
        return []
    rates = p["images_per_s"]
    met = {True: "met", False: "**not met**", None: "not measured"}[p["met"]]
    source = f" (source: `{json_name}`)" if json_name else ""
    return [f"One input partition vs six (saturated, a backlog of {p['events']} events, fixed "
            f"{p['settings']['max_batch_size']} / {fmt(p['settings']['max_batch_wait_ms'])} ms): 1 partition "
            f"{fmt(rates['1'])} events/s, 6 partitions {fmt(rates['6'])} events/s, "
            f"ratio **{fmt(p['ratio_1_over_6'], 3)}** (target ≥ 0.9: {met}); 1 partition with "
            f"max.partition.fetch.bytes at 16 MiB {fmt(rates.get('1, 16 MiB fetches'))} events/s, ratio "
            f"{fmt(p.get('ratio_1_big_fetch_over_6'), 3)}; each the mean of {len(p.get('runs', {}).get('1', [1]))} "
            f"run(s), in A-B-C-C-B-A order (runs: {_runs(p.get('runs', {}))}){source}."]  # fmt: skip


def _runs(runs: dict[str, list[float]]) -> str:
    return "; ".join(f"{name}: {', '.join(fmt(v) for v in values)}" for name, values in runs.items())


def goodput_plot(result: dict[str, Any], path: Path) -> Path | None:
    """Per model of the run (a row each): goodput (left) and p99 (right, log scale, with the SLO) per policy."""
    models = [r for r in (result, *result.get("also", [])) if r.get("goodput")]
    if not models:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4.2 * len(models)), squeeze=False)
    for (left, right), model in zip(axes, models, strict=True):
        _plot_model(left, right, model)
    m = result["machine"]
    title = f"Batching policies on Apache Kafka; {m['cpu_model']}, {m['cores']} cores"
    return save_figure(fig, title, path)


def _plot_model(left: Any, right: Any, model: dict[str, Any]) -> None:
    g, label = model["goodput"], model["settings"]["label"]
    names = list(g["traces"])
    labels = [n.removeprefix("poisson") + " %" if n.startswith("poisson") else n for n in names]
    for policy, rows in g["policies"].items():
        style = {"linewidth": 2.5, "marker": "*", "markersize": 10} if policy == "slo" else {"marker": "o"}
        name = NAMES.get(policy, policy).strip("*")
        left.plot(labels, [rows[n]["goodput_per_s"] for n in names], label=name, **style)
        right.plot(labels, [rows[n]["p99_ms"] for n in names], label=name, **style)
    offered = [g["traces"][n]["mean_rate_per_s"] for n in names]
    left.plot(labels, offered, linestyle=":", color="grey", label="offered")
    left.set(xlabel="trace (load, % of the saturated rate)", ylabel="results within SLO per s",
             title=f"{label}: goodput")  # fmt: skip
    right.axhline(g["plan"]["latency_target_ms"], color="black", linestyle="--", label="SLO")
    right.set(yscale="log", xlabel="trace", ylabel="p99 latency (ms)",
              title=f"{label}: p99 end to end (Kafka timestamps)")  # fmt: skip
    left.legend(fontsize=7)
    right.legend(fontsize=7)
