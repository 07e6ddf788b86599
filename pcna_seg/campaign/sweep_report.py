"""A sweep's results: ``sweep_results.csv``, ``sweep_report.md``, ``best_config.yaml``, PNGs.

``sweep_results.csv`` has one row per trial, ranked (finished trials by the metric, best first,
then the others): ``rank``, ``trial``, ``status``, every swept key, the ranking metric, every
other metric any trial reported, ``wall_s``, ``attempts``, ``error``. The PNGs show the metric
per value of each axis (box plot of the finished trials plus every trial as a dot) and, for each
pair of axes with few distinct values, a heatmap of the mean metric.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from pathlib import Path
from typing import Any

from pcna_seg.errors import ConfigError
from pcna_seg.utils_io import write_text_atomic

MAX_HEATMAP_VALUES = 12  # an axis with more distinct values is plotted as a scatter, without heatmap


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return "" if v is None else str(v)


def ranked(spec: Any, trials: list[Any], records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per trial, finished ones by ``spec.metric`` (best first), then the rest."""
    rows = []
    for t in trials:
        rec = records.get(t.id) or {}
        rows.append(
            {
                "trial": t.id,
                "status": rec.get("status", "pending"),
                "values": t.values,
                "metrics": rec.get("metrics", {}) if rec.get("status") == "done" else {},
                "wall_s": rec.get("wall_s"),
                "attempts": rec.get("attempts", 0),
                "error": rec.get("error", "") if rec.get("status") == "failed" else "",
            }
        )
    sign = -1.0 if spec.mode == "max" else 1.0

    def key(r: dict[str, Any]) -> tuple[int, float]:
        v = r["metrics"].get(spec.metric)
        ok = isinstance(v, (int, float)) and math.isfinite(v)
        return (0, sign * v) if ok else (1, 0.0)

    rows.sort(key=key)
    for i, r in enumerate(rows, 1):
        r["rank"] = i if key(r)[0] == 0 else ""
    return rows


def to_csv(spec: Any, rows: list[dict[str, Any]]) -> str:
    others = sorted({k for r in rows for k in r["metrics"]} - {spec.metric})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rank", "trial", "status", *spec.axes, spec.metric, *others, "wall_s", "attempts", "error"])
    for r in rows:
        w.writerow(
            [
                r["rank"],
                r["trial"],
                r["status"],
                *(_fmt(r["values"].get(a)) for a in spec.axes),
                *(_fmt(r["metrics"].get(m)) for m in [spec.metric, *others]),
                _fmt(r["wall_s"]),
                r["attempts"],
                r["error"],
            ]
        )
    return buf.getvalue()


def _markdown_table(spec: Any, rows: list[dict[str, Any]]) -> str:
    head = ["rank", "trial", "status", *spec.axes, spec.metric, "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            str(r["rank"]),
            f"`{r['trial']}`",
            r["status"],
            *(_fmt(r["values"].get(a)) for a in spec.axes),
            _fmt(r["metrics"].get(spec.metric)),
            _fmt(r["wall_s"] and round(r["wall_s"], 1)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_config(spec: Any, best: Any) -> str:
    """The best trial as a ready YAML: ``_BASE_`` (the sweep's base config) plus the sweep's
    fixed overrides and the trial's axis values, ``OUTPUT_DIR`` a fresh folder. A campaign gets
    its resolved campaign file with absolute stage paths and those overrides on every stage."""
    import yaml

    data = yaml.safe_load(best.config_text)
    head = (f"# Best trial {best.id} of sweep {spec.name} ({spec.metric} {spec.mode}): {best.values}\n"
            f"# (the fully resolved config it ran: {best.dir / 'config.yaml'})\n")  # fmt: skip
    if spec.trainer == "campaign":
        camp = data["CAMPAIGN"]
        stages = camp["STAGES"]
        camp["STAGES"] = [
            str(Path(s) if Path(s).is_absolute() else (spec.base.parent / s).resolve()) for s in stages
        ]
        swept = " ".join(repr(t) if " " in t else t for t in [*spec.opts, *best.opts])
        own = list(camp.get("STAGE_OPTS") or [""] * len(stages))
        camp["STAGE_OPTS"] = [f"{swept} {o}".strip() for o in own]
        data["OUTPUT_DIR"] = f"output/{spec.name}_best"
        return head + yaml.safe_dump(data, sort_keys=False)
    short: dict[str, Any] = {"_BASE_": str(spec.base.resolve())}
    for key in [*spec.opts[0::2], *best.values]:  # the resolved value, as the config holds it
        node, parts = data, key.split(".")
        for part in parts:
            node = node[part]
        at = short
        for part in parts[:-1]:
            at = at.setdefault(part, {})
        at[parts[-1]] = node
    short["OUTPUT_DIR"] = f"output/{spec.name}_best"
    return head + yaml.safe_dump(short, sort_keys=False)


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_axes(spec: Any, rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Metric per axis value (box + dots; a scatter for a continuous axis) and a heatmap per pair
    of categorical axes."""
    from pcna_seg.evaluation.report import pyplot, save_figure

    plt = pyplot()
    done = [r for r in rows if isinstance(r["metrics"].get(spec.metric), (int, float))]
    if not done:
        return []
    paths = []
    categorical = [a for a in spec.axes if _categorical(spec, a, done)]
    for axis in spec.axes:
        vals = sorted({_fmt(r["values"][axis]) for r in done}, key=lambda s: (_sortkey(s), s))
        fig, ax = plt.subplots(figsize=(max(4.2, 0.9 * len(vals) + 1.5) if axis in categorical else 4.6, 3.6))
        if axis in categorical:
            groups = [[r["metrics"][spec.metric] for r in done if _fmt(r["values"][axis]) == v] for v in vals]
            ax.boxplot(groups, positions=range(len(vals)), widths=0.5, showfliers=False)
            for i, g in enumerate(groups):
                ax.plot(
                    [i + (j - (len(g) - 1) / 2) * 0.06 for j in range(len(g))],
                    g,
                    "o",
                    color="tab:blue",
                    alpha=0.7,
                    markersize=5,
                )
            ax.set_xticks(range(len(vals)), vals, fontsize=8)
        else:  # continuous random axis: a scatter on its own scale
            xs = [r["values"][axis] for r in done]
            ax.plot(xs, [r["metrics"][spec.metric] for r in done], "o", color="tab:blue", alpha=0.7)
            if _numeric(xs) and min(xs) > 0 and max(xs) / min(xs) > 20:
                ax.set_xscale("log")
        ax.set_xlabel(axis, fontsize=8)
        ax.set_ylabel(spec.metric, fontsize=8)
        ax.set_title(f"{spec.name}\n{spec.metric} by {axis}", fontsize=9)
        fig.tight_layout()
        paths.append(save_figure(fig, out / f"sweep_{_slug(axis)}.png", dpi=110))
    for a, b in itertools.combinations(categorical, 2):
        paths.append(_heatmap(plt, save_figure, spec, done, a, b, out))
    return paths


def _categorical(spec: Any, axis: str, done: list[dict[str, Any]]) -> bool:
    """Grid and ``choice``/``randint`` axes with few distinct values; a uniform or loguniform
    random axis is continuous (every trial its own value): scatter plot, no heatmap."""
    kind = next(iter(spec.random_axes[axis])) if axis in spec.random_axes else "grid"
    few = len({_fmt(r["values"][axis]) for r in done}) <= MAX_HEATMAP_VALUES
    return kind not in ("uniform", "loguniform") and few


def _sortkey(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return math.inf


def _slug(key: str) -> str:
    return key.replace(".", "_").replace("/", "_")


def _heatmap(plt: Any, save: Any, spec: Any, done: list[dict[str, Any]], a: str, b: str, out: Path) -> Path:
    import numpy as np

    ya = sorted({_fmt(r["values"][a]) for r in done}, key=lambda s: (_sortkey(s), s))
    xb = sorted({_fmt(r["values"][b]) for r in done}, key=lambda s: (_sortkey(s), s))
    grid = np.full((len(ya), len(xb)), np.nan)
    for i, va in enumerate(ya):
        for j, vb in enumerate(xb):
            m = [
                r["metrics"][spec.metric]
                for r in done
                if _fmt(r["values"][a]) == va and _fmt(r["values"][b]) == vb
            ]
            grid[i, j] = float(np.mean(m)) if m else np.nan
    fig, ax = plt.subplots(figsize=(1.1 * len(xb) + 2.6, 0.8 * len(ya) + 1.8))
    im = ax.imshow(grid, cmap="viridis" if spec.mode == "max" else "viridis_r", aspect="auto")
    for i in range(len(ya)):
        for j in range(len(xb)):
            if np.isfinite(grid[i, j]):
                ax.text(
                    j,
                    i,
                    f"{grid[i, j]:.3g}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="w",
                    path_effects=_outline(),
                )
    ax.set_xticks(range(len(xb)), xb, fontsize=8)
    ax.set_yticks(range(len(ya)), ya, fontsize=8)
    ax.set_xlabel(b, fontsize=8)
    ax.set_ylabel(a, fontsize=8)
    fig.colorbar(im, ax=ax, label=f"mean {spec.metric}")
    ax.set_title(f"{spec.name}: {spec.metric}", fontsize=9)
    fig.tight_layout()
    return save(fig, out / f"sweep_heatmap_{_slug(a)}__{_slug(b)}.png", dpi=110)


def _outline() -> list[Any]:
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=2, foreground="black")]


def write_results(
    spec: Any, trials: list[Any], records: dict[str, dict[str, Any]], final: bool
) -> dict[str, Any]:
    """Write the CSV (always) and, when ``final``, the report, best config and PNGs.

    ConfigError (after writing the CSV) when finished trials exist but none reports the metric.
    """
    out = spec.output_dir
    rows = ranked(spec, trials, records)
    paths: dict[str, Any] = {"csv": write_text_atomic(out / "sweep_results.csv", to_csv(spec, rows))}
    if not final:
        return paths
    finished = [r for r in rows if r["status"] == "done"]
    reported = sorted({k for r in finished for k in r["metrics"]})
    if finished and spec.metric not in reported:
        raise ConfigError(
            f"No trial of {spec.file} reports the metric {spec.metric!r}; they report: {', '.join(reported)}"
        )
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "pending", "running")}
    by_id = {t.id: t for t in trials}
    lines = [
        f"# Sweep {spec.name}",
        "",
        f"{len(rows)} trials of `{spec.trainer}` on `{spec.base}`, ranked by **{spec.metric}** "
        f"({spec.mode}); " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ".",
        "",
        "Made by `tools/sweep.py` from `" + str(spec.file) + "`; trial folders in `trials/<trial>`.",
        "",
        _markdown_table(spec, rows),
        "",
    ]
    if finished and finished[0]["rank"] != "":
        best = by_id[finished[0]["trial"]]
        paths["best_config"] = write_text_atomic(out / "best_config.yaml", best_config(spec, best))
        tool = {"unet": "train_unet.py", "train_net": "train_net.py", "campaign": "run_campaign.py"}[
            spec.trainer
        ]
        lines += [
            "## Best",
            "",
            f"Trial `{best.id}`: {best.values}, {spec.metric} = {_fmt(finished[0]['metrics'][spec.metric])}.",
            "",
            f"Ready config: `best_config.yaml` (`python tools/{tool} --config-file best_config.yaml`).",
            "",
        ]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += (
            ["## Failed trials", ""]
            + [f"- `{r['trial']}` {r['values']}: {r['error']}" for r in failed]
            + [""]
        )
    pngs = plot_axes(spec, rows, out)
    if pngs:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    paths["pngs"] = pngs
    paths["report"] = write_text_atomic(out / "sweep_report.md", "\n".join(lines))
    paths["rows"] = rows
    return paths
