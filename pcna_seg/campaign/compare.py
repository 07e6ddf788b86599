"""Variants compared over seeds: mean ± sd and every run's value, as a table and a bar chart.

A *variant* is one stage of a campaign (an ablation lists its variants as stages, e.g. three
input recipes, or stage 3 from three different starting weights); with ``CAMPAIGN.SEEDS`` each
variant runs once per seed. The table puts the spread next to the mean so a difference smaller
than the seed-to-seed noise reads as such.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

# (summary key, column title) of the metrics compared; the first test dataset of each stage
HEADLINE = [
    ("segm/AP50", "segm AP50"),
    ("segm/AP", "segm AP"),
    ("cells/f1@0.5", "cell F1@0.5"),
    ("cells/pq@0.5", "PQ@0.5"),
    ("cells/dsb_score", "DSB score"),
    ("phases/balanced_accuracy", "phase bal. acc."),
]


def comparison_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per variant (stage index), in stage order: ``{"variant", "seeds", "values"}``,
    ``values[metric]`` = list of floats, one per seed that has the metric (first test set)."""
    variants: dict[int, dict[str, Any]] = {}
    for r in rows:
        v = variants.setdefault(
            r["index"], {"variant": f"{r['index']}_{r['name']}", "seeds": [], "values": {}}
        )
        v["seeds"].append(r.get("seed"))
        metrics = next(iter((r.get("metrics") or {}).values()), {})
        for key, value in metrics.items():
            v["values"].setdefault(key, []).append(float(value))
    return [variants[k] for k in sorted(variants)]


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def comparison_table(comp: list[dict[str, Any]], metrics: list[tuple[str, str]] = HEADLINE) -> str:
    """Markdown table: a row per variant, a column per metric, ``mean ± sd (v1, v2, v3)``."""
    keys = [(k, t) for k, t in metrics if any(c["values"].get(k) for c in comp)]
    head = "| variant | seeds | " + " | ".join(t for _, t in keys) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 2)]
    for c in comp:
        cells = []
        for k, _ in keys:
            vals = c["values"].get(k) or []
            m, s = mean_sd(vals)
            few = f"n={len(vals)}: " if len(vals) < len(c["seeds"]) else ""  # a run without the metric
            cells.append(f"{m:.3f} ± {s:.3f} ({few}{', '.join(f'{v:.3f}' for v in vals)})" if vals else "–")
        seeds = ",".join("–" if s is None else str(s) for s in c["seeds"])
        lines.append(f"| {c['variant']} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_comparison(
    comp: list[dict[str, Any]], out_png: Path, metrics: list[tuple[str, str]] = HEADLINE
) -> Path | None:
    """Grouped bars: metric groups on x, one bar per variant (mean), error bars = sd over seeds,
    dots = each run's value."""
    from pcna_seg.evaluation.report import pyplot, save_figure

    keys = [(k, t) for k, t in metrics if any(c["values"].get(k) for c in comp)]
    if not keys:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.35 * len(keys) * len(comp) + 2)), 4.2))
    width = 0.8 / max(len(comp), 1)
    colours = plt.get_cmap("tab10")
    for j, c in enumerate(comp):
        xs, means, sds = [], [], []
        for i, (k, _) in enumerate(keys):
            vals = c["values"].get(k) or []
            if not vals:
                continue
            m, s = mean_sd(vals)
            x = i - 0.4 + width * (j + 0.5)
            xs.append(x)
            means.append(m)
            sds.append(s)
            ax.scatter([x] * len(vals), vals, s=8, color="black", zorder=3)
        ax.bar(
            xs,
            means,
            width=width * 0.95,
            yerr=sds if len(c["seeds"]) > 1 else None,
            capsize=3,
            color=colours(j % 10),
            label=c["variant"],
        )
    ax.set_xticks(range(len(keys)), [t for _, t in keys], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out value")
    n_seeds = max(len(c["seeds"]) for c in comp)
    ax.set_title(
        "held-out metrics per stage"
        + (f" (mean ± sd over {n_seeds} seeds; dots: each run)" if n_seeds > 1 else ""),
        fontsize=10,
    )
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=min(len(comp), 3))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_png, dpi=110)
