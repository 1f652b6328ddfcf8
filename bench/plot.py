"""Bench plot: throughput vs batch size and latency vs throughput, side by side in one PNG (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import fmt

_LINES = (("decode_only_images_per_s", "decode only", ":", "tab:purple"),
          ("pipeline_ceiling_images_per_s", "pipeline ceiling", "--", "tab:green"),
          ("e2e_images_per_s", "end to end", "-", "tab:red"),
          ("baseline_images_per_s", "baseline", "-.", "grey"))  # fmt: skip


def plot(result: dict[str, Any], path: Path) -> Path:
    """Throughput vs batch size (left) and latency percentiles vs throughput (right), as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant, rates in (result.get("model_only_images_per_s") or {}).items():
        sizes = sorted(int(b) for b in rates)
        left.plot(sizes, [rates[str(b)] for b in sizes], marker="o", label=f"model only ({variant})")
    levels = [result[key] for key, *_ in _LINES if result.get(key)]
    for key, name, style, color in _LINES:
        if result.get(key):
            left.axhline(result[key], linestyle=style, color=color, label=f"{name} ({fmt(result[key])})")
    values = levels + [r for rates in (result.get("model_only_images_per_s") or {}).values() for r in rates.values()]
    # Decode alone can be 300x faster than ViT-B/16 on a CPU: a log axis keeps both readable.
    wide = bool(values) and max(values) > 20 * min(values)
    left.set(xscale="log", yscale="log" if wide else "linear", xlabel="batch size", ylabel="images/s",
             title="Throughput vs batch size")  # fmt: skip
    left.set_xticks([1, 2, 4, 8, 16, 32, 64], labels=["1", "2", "4", "8", "16", "32", "64"])
    left.legend(fontsize=7)
    _latency_plot(right, result.get("latency") or {}, result.get("slo"))
    title = f"{result['settings']['label']} — {result['machine']['cpu_model']}, {result['machine']['cores']} cores"
    return save_figure(fig, f"{title}, GPU {result['machine']['gpu']}", path)


def save_figure(fig: Any, title: str, path: Path) -> Path:
    """Title the figure, lay it out, write it as a PNG at `path` (folders made) and free it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _latency_plot(ax: Any, latency: dict[str, Any], slo: dict[str, Any] | None) -> None:
    ax.set(xlabel="throughput (events/s sent)", ylabel="latency (ms)", title="End-to-end latency vs throughput")
    if not latency:
        ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
        return
    rows = sorted(latency.values(), key=lambda r: r["sent_per_s"])
    for q in ("p50_ms", "p95_ms", "p99_ms"):
        ax.plot([r["sent_per_s"] for r in rows], [r[q] for r in rows], marker="o", label=q.removesuffix("_ms"))
    if slo:
        _slo_points(ax, slo)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)


def _slo_points(ax: Any, slo: dict[str, Any]) -> None:
    """p99 of the slo stage's two configurations, and the target they were held to."""
    styles = {"fixed": ("x", "tab:brown", "p99, roomy fixed batching"), "slo": ("*", "tab:cyan", "p99, SLO-adaptive")}
    for config, row in slo["configs"].items():
        marker, color, name = styles.get(config, ("+", "black", config))
        points = sorted((r["sent_per_s"], r["p99_ms"]) for r in row["latency"].values())
        ax.plot(*zip(*points, strict=True), linestyle="none", marker=marker, markersize=9, color=color, label=name)
    target = slo["plan"]["latency_target_ms"]
    ax.axhline(target, linestyle=":", color="tab:cyan", label=f"p99 target ({fmt(target)} ms)")
