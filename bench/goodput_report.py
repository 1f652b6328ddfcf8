"""The goodput stage's report: Markdown tables (goodput, p50 / p99 per policy and trace) and one PNG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.goodput import POISSON_LOADS, policy_spec
from bench.plot import save_figure
from bench.report import fmt
from processor.policies import PolicyName

NAMES = {"triton": "triton", "cork": "cork (BentoML)", "aimd": "aimd (Clipper)", "slo": "**slo (ours)**"}
OURS = PolicyName.SLO.value
BEAT_FIXED = 1.2  # the target: ours' goodput over the best fixed setting's, at 75 % load and in the bursts
P99_UP_TO = 75  # % load: ours' p99 within the SLO up to here
P99_SHARE = 0.99  # of a cell's events within the SLO: what a p99 within it takes
ORDINALS = {1: "1st", 2: "2nd", 3: "3rd"}
LEVEL = 0.01  # two slices' shares within the SLO this close (1 percentage point) count as level


def policy_label(policy: str, plan: dict[str, Any]) -> str:
    """A column's name; a fixed policy says its bounds, any other its own ones (`POLICY:ROWS/MS`) if it has them."""
    name, rows, wait_ms, fifo = policy_spec(policy)
    label = NAMES.get(name.value, name.value)
    if name is PolicyName.FIXED or rows is not None:
        rows, wait_ms = rows or plan["max_batch_size"], plan["max_batch_wait_ms"] if wait_ms is None else wait_ms
        label = f"{label} {rows} / {fmt(wait_ms, 0)} ms"
    return f"{label}, FIFO decode" if fifo else label


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
    head = "| trace (mean offered rate) | " + " | ".join(policy_label(p, plan) for p in cols) + " |"
    rule = "|---|" + "---|" * len(cols)
    own = [policy_label(p, plan) for p in cols if policy_spec(p).rows is not None]
    except_own = f" (except {', '.join(own)}, at bounds of its own)" if own else ""
    lines = [f"Saturated rate (fixed, {plan['max_batch_size']} / {fmt(plan['max_batch_wait_ms'])} ms, a backlog of "
             f"{plan['max_events']} events): **{fmt(max_rate)} events/s** before the traces, "
             f"{fmt(g.get('max_images_per_s_after'))} after them; SLO {fmt(plan['latency_target_ms'])} ms "
             f"(output − input Kafka timestamps); every policy shares the bounds {plan['max_batch_size']} rows / "
             f"{fmt(plan['max_batch_wait_ms'])} ms{except_own} and sees the same seeded traces{source}.", "",
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
    lines += _slices_table(g, max_rate)
    samples = sorted({policies[p][n]["events"] for p in cols for n in g["traces"]})
    lines += ["", f"Samples per cell: {samples[0]}" + (f"–{samples[-1]}" if samples[-1] != samples[0] else "")
              + " events (one latency each)."]  # fmt: skip
    return lines + goodput_targets(g)


def goodput_targets(g: dict[str, Any]) -> list[str]:
    """The issue's three targets, computed from the run's rows (none without ours in it)."""
    policies, plan = g["policies"], g["plan"]
    if OURS not in policies or len(policies) < 2:
        return []
    ours = policies[OURS]
    others = {p: rows for p, rows in policies.items() if p != OURS}
    names = [n for n in g["traces"] if n in ours]
    behind = [n for n in names if _rank(n, ours, others) > 1]
    lines = ["", "Targets, computed from this run:", "",
             f"- Ours ≥ every other policy at every load: {_verdict(not behind)} — "
             + "; ".join(_against(n, ours, others, plan) for n in names) + "."]  # fmt: skip
    fixed = {p: rows for p, rows in others.items() if policy_spec(p).name is PolicyName.FIXED}
    checked = [n for n in (f"poisson{P99_UP_TO}", "bursty") if n in names]
    if fixed and checked:
        best_fixed = {n: max(r[n]["goodput_per_s"] for r in fixed.values()) for n in checked}
        ratios = {n: _ratio(ours[n]["goodput_per_s"], best_fixed[n]) for n in checked}
        # No policy can keep more than every event in time: where the best fixed setting already kept most of the
        # offered rate, the target is out of reach for any policy, and the line says so rather than leave it implied.
        reachable = {n: _ratio(ours[n]["offered_per_s"], best_fixed[n]) for n in checked}
        met = all(r >= BEAT_FIXED for r in ratios.values())
        lines.append(
            f"- Ours ≥ {BEAT_FIXED} × the best fixed setting ({', '.join(policy_label(p, plan) for p in fixed)}) "
            f"at {P99_UP_TO} % load and in the bursts: {_verdict(met)} — "
            + "; ".join(
                f"{_short(n)} {_times(ratios[n])} (any policy: at most {_times(reachable[n])})" for n in checked
            )
            + "."
        )
    capped = [n for n in (f"poisson{pct}" for pct in POISSON_LOADS if pct <= P99_UP_TO) if n in names]
    if capped:
        target = plan["latency_target_ms"]
        over = [n for n in capped if ours[n]["p99_ms"] > target]
        lines.append(f"- Ours' p99 within the {fmt(target, 0)} ms SLO up to {P99_UP_TO} % load: {_verdict(not over)} — "
                     + ", ".join(f"{_short(n)} {fmt(ours[n]['p99_ms'], 0)} ms" for n in capped)
                     + _none_kept_99(over, policies, plan) + ".")  # fmt: skip
    return lines


def _none_kept_99(over: list[str], policies: dict[str, Any], plan: dict[str, Any]) -> str:
    """A p99 within the SLO means 99 % of the events within it: the loads where no policy kept that many."""
    parts = []
    for n in over:
        best = max(policies, key=lambda p: policies[p][n]["within_fraction"])
        if policies[best][n]["within_fraction"] < P99_SHARE:
            share = fmt(100 * policies[best][n]["within_fraction"], 1)
            who = "ours" if best == OURS else f"`{policy_label(best, plan)}`"
            parts.append(f"{_short(n)}: the most any policy kept within the SLO was {share} % ({who})")
    return f" (a p99 within the SLO needs 99 % of the events within it; {'; '.join(parts)})" if parts else ""


def _rank(trace: str, ours: dict[str, Any], others: dict[str, dict[str, Any]]) -> int:
    """1 + the policies with strictly more goodput than ours on `trace` (a tie shares the place)."""
    mine = ours[trace]["goodput_per_s"]
    return 1 + sum(1 for rows in others.values() if rows[trace]["goodput_per_s"] > mine)


def _against(trace: str, ours: dict[str, Any], others: dict[str, dict[str, Any]], plan: dict[str, Any]) -> str:
    """`75 % 369.9 vs 353.8/s fixed 64 / 50 ms (1st)`: ours against the best other policy on one trace."""
    best = max(others, key=lambda p: others[p][trace]["goodput_per_s"])
    mine, top = ours[trace]["goodput_per_s"], others[best][trace]["goodput_per_s"]
    rank = _rank(trace, ours, others)
    place = "tied" if mine == top else ORDINALS.get(rank, f"{rank}th")
    behind = 100 * (mine / top - 1) if top else 0.0
    gap = "" if mine >= top or not top else f", {fmt(behind, 1 if behind <= -0.1 else 2)} %"  # never "-0.0 %"
    return f"{_short(trace)} {fmt(mine)} vs {fmt(top)}/s `{policy_label(best, plan)}` ({place}{gap})"


def _ratio(mine: float, fixed: float) -> float:
    if fixed > 0:
        return mine / fixed
    return math.inf if mine > 0 else 0.0


def _times(ratio: float) -> str:
    """`1.09 ×`; a fixed setting that kept nothing in time gives `∞ ×`."""
    return f"{'∞' if math.isinf(ratio) else fmt(ratio, 2)} ×"


def _short(trace: str) -> str:
    """`poisson75` → `75 %`; other traces keep their name (tables and the plot's x axis)."""
    return trace.removeprefix("poisson") + " %" if trace.startswith("poisson") else trace


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def _split_table(g: dict[str, Any], max_rate: float) -> list[str]:
    """Ours: where the slowest 1 % of each trace's events spent their time (absent from older JSONs)."""
    ours = g["policies"].get(OURS, {})
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


def _slices_table(g: dict[str, Any], max_rate: float) -> list[str]:
    """Ours against each policy slice by slice: ahead / level / behind in share within the SLO (newer JSONs only).

    The policies take turns slice by slice, so slice k of every policy ran within seconds of the others: a slow
    spell of the shared machine meets them alike, and a slice one policy loses alone says more than a cell's total.
    """
    policies = g["policies"]
    ours = policies.get(OURS, {})
    others = [p for p in policies if p != OURS]
    names = [n for n in g["traces"] if ours.get(n, {}).get("slices_within_fraction")]
    if not names or not others:
        return []
    lines = ["", "Ours against each policy slice by slice (the policies took turns, so slice k of each ran within "
             "seconds of the others): the slices where ours kept a larger / the same (within 1 point) / a smaller "
             "share of its events within the SLO, and each column's worst slice:", "",
             "| trace | " + " | ".join(policy_label(p, g["plan"]) for p in (OURS, *others)) + " |",
             "|---|" + "---|" * (len(others) + 1)]  # fmt: skip
    for name in names:
        mine = ours[name]["slices_within_fraction"]
        cells = [f"{len(mine)} slices; worst {_pct(min(mine))}"]
        for p in others:
            theirs = policies[p][name].get("slices_within_fraction") or []
            cells.append(f"{_ahead_level_behind(mine, theirs)}; worst {_pct(min(theirs))}" if theirs else "–")
        lines.append(f"| {_trace_label(name, g['traces'][name], max_rate)} | " + " | ".join(cells) + " |")
    return lines


def _pct(share: float) -> str:
    return f"{fmt(100 * share, 0)} %"


def _ahead_level_behind(mine: list[float], theirs: list[float]) -> str:
    """`5 / 2 / 1`: slices where `mine` is ahead of, level with (LEVEL), behind `theirs`, paired in order."""
    pairs = list(zip(mine, theirs, strict=False))
    ahead = sum(1 for m, t in pairs if m > t + LEVEL)
    behind = sum(1 for m, t in pairs if m < t - LEVEL)
    return f"{ahead} / {len(pairs) - ahead - behind} / {behind}"


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
    labels = [_short(n) for n in names]
    for policy, rows in g["policies"].items():
        style = {"linewidth": 2.5, "marker": "*", "markersize": 10} if policy == OURS else {"marker": "o"}
        name = policy_label(policy, g["plan"]).strip("*")
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
