"""The campaign report: ``campaign_report.md`` + PNGs beside ``campaign_summary.json``.

Per stage run: the data it trained and was tested on (images, instances per class, classes,
split), iterations, wall time, final training losses, and its held-out metrics (COCO segm
AP/AP50/AP75 and AP per class, cell F1/PQ/DSB score/SEG, phase balanced accuracy) on the
stage's own test split. PNGs: every stage's loss curve on one wall-time axis, held-out metrics
per stage (mean ± sd over seeds with error bars when the campaign repeats seeds), the last
stage's phase confusion matrix, and a few prediction overlays of the last stage on its test
frames. With seeds, a comparison table gives per stage and metric mean ± sd and every run's
value (:mod:`.compare`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from pcna_seg.campaign.compare import HEADLINE, comparison_rows, comparison_table, plot_comparison
from pcna_seg.utils_io import write_text_atomic

logger = logging.getLogger(__name__)
OVERLAYS = "report_overlays"  # folder of the prediction overlays, beside the report


def read_metrics_lines(path: Path) -> list[dict[str, Any]]:
    """The entries of a detectron2-style ``metrics.json`` (one JSON object a line); [] if none."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill
    return out


def headline(results: dict[str, Any]) -> dict[str, float]:
    """Flat numbers of one ``results.json``: ``segm/AP``, ``segm/AP50``, ``segm/AP75``,
    ``segm/AP-<class>``, ``bbox/AP``, ``bbox/AP50``, ``cells/f1@0.5``, ``cells/pq@0.5``,
    ``cells/dsb_score``, ``cells/seg``, ``cells/count_mae``, ``phases/balanced_accuracy``."""
    flat: dict[str, float] = {}
    for task, keys in (("segm", None), ("bbox", ("AP", "AP50", "AP75")), ("segm_any_class", ("AP50",))):
        for key, value in (results.get(task) or {}).items():
            wanted = key in ("AP", "AP50", "AP75") or key.startswith("AP-") if keys is None else key in keys
            if wanted and isinstance(value, (int, float)):
                flat[f"{task}/{key}"] = float(value)
    for key in ("f1@0.5", "pq@0.5", "dsb_score", "seg", "count_mae"):
        if isinstance((results.get("cells") or {}).get(key), (int, float)):
            flat[f"cells/{key}"] = float(results["cells"][key])
    phases = results.get("phases") or {}
    if len(phases.get("class_names") or []) > 1 and isinstance(phases.get("balanced_accuracy"), (int, float)):
        flat["phases/balanced_accuracy"] = float(phases["balanced_accuracy"])
    return flat


def stage_results(output_dir: Path) -> dict[str, dict[str, Any]]:
    """``results.json`` of each test dataset a stage evaluated (OUTPUT_DIR/eval/<dataset>/)."""
    out = {}
    for res in sorted(Path(output_dir, "eval").glob("*/results.json")):
        with open(res, encoding="utf-8") as fh:
            out[res.parent.name] = json.load(fh)
    return out


def stage_row(stage: Any, data: dict[str, Any]) -> dict[str, Any]:
    """What the report needs of one stage run: data, iterations, wall time, losses, metrics."""
    from pcna_seg.campaign.staged import TIMING

    out_dir = Path(stage.output_dir)
    lines = read_metrics_lines(out_dir / "metrics.json")
    train = [e for e in lines if "total_loss" in e]
    last = train[-1] if train else {}
    timing = out_dir / TIMING
    wall = json.loads(timing.read_text(encoding="utf-8")).get("wall_s") if timing.is_file() else None
    return {
        "data": {k: data.get(k) for k in ("train", "test", "classes")},
        "iterations": data.get("iterations"),
        "iterations_done": int(last["iteration"]) + 1 if "iteration" in last else 0,
        "wall_s": wall,
        "final_losses": {
            k: round(float(v), 4) for k, v in last.items() if k == "total_loss" or k.startswith("loss_")
        },
        "metrics": {ds: headline(r) for ds, r in stage_results(out_dir).items()},
    }


def plot_losses(rows: list[dict[str, Any]], out_png: Path) -> Path | None:
    """Total training loss of every stage run on one wall-time axis (each seed its own timeline)."""
    from pcna_seg.evaluation.report import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    colours = plt.get_cmap("tab10")
    offsets: dict[Any, float] = {}
    drawn = 0
    for row in rows:
        lines = [e for e in read_metrics_lines(Path(row["output_dir"]) / "metrics.json") if "total_loss" in e]
        t0 = offsets.get(row["seed"], 0.0)
        ts, prev_it, t = [], -1, t0
        for e in lines:
            t += float(e.get("time", 0.0)) * (int(e["iteration"]) - prev_it)
            prev_it = int(e["iteration"])
            ts.append(t)
        if lines:
            first_seed = row["seed"] == rows[0]["seed"]
            ax.plot(
                [x / 60 for x in ts],
                [e["total_loss"] for e in lines],
                color=colours((row["index"] - 1) % 10),
                lw=1.6 if first_seed else 0.8,
                alpha=1.0 if first_seed else 0.45,
                label=f"{row['index']}_{row['name']}" if first_seed else None,
            )
            drawn += 1
        offsets[row["seed"]] = t0 + float(row.get("wall_s") or (ts[-1] - t0 if ts else 0.0))
    if not drawn:
        pyplot().close(fig)
        return None
    ax.set_xlabel(
        "training time (min), stages back to back" + (" (one line per seed)" if len(offsets) > 1 else "")
    )
    ax.set_ylabel("total training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("loss curves of all stages", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_png, dpi=110)


def write_overlays(rows: list[dict[str, Any]], out_dir: Path, n: int = 3) -> list[Path]:
    """Predict up to ``n`` test frames with the last stage's final weights; overlay PNGs."""
    from pcna_seg.inference import Predictor, find_inputs, load_predict_config, run_prediction

    last = [r for r in rows if r["seed"] == rows[-1]["seed"]][-1]
    weights = Path(last["output_dir"]) / "model_final.pth"
    tests = (last.get("data") or {}).get("test") or []
    if not weights.is_file() or not tests or not tests[0].get("json_file"):
        return []
    opts = ["MODEL.ROI_HEADS.NMS_CLASS_AGNOSTIC", "True", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.5"]
    cfg = load_predict_config(weights, None, opts)
    frames = find_inputs(tests[0]["json_file"], None)
    frames = frames[:: max(1, len(frames) // n)][:n]  # spread over the test set (other movies)
    run_prediction(Predictor(cfg, weights), frames, out_dir, progress=False, overwrite=True)
    return sorted(out_dir.glob("*_overlay.png"))


def _fmt(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _data_cell(sets: list[dict[str, Any]] | None) -> str:
    if not sets:
        return "–"
    return "<br>".join(
        f"{d['name']}: {d['images']} img, {d['instances']} inst"
        + (
            f" ({', '.join(f'{c} {k}' for c, k in d['per_class'].items())})"
            if len(d["per_class"]) > 1
            else ""
        )
        + (f", split by {d['split_by']}" if d.get("split_by") else "")
        for d in sets
    )


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def render_markdown(summary: dict[str, Any], root: Path, pictures: dict[str, Any]) -> str:
    """The Markdown text of the report (tables + links to the PNGs, relative to ``root``)."""
    rows = summary["stages"]
    md = [f"# Campaign `{summary['campaign']}`", ""]
    seeds = summary.get("seeds") or []
    md.append(
        f"Campaign file `{summary.get('campaign_file', '?')}`; {len(rows)} stage runs"
        + (f" ({len(rows) // max(len(seeds), 1)} stages × seeds {seeds})" if seeds else "")
        + ". Every number is measured on the stage's own held-out split (images it never trained on)."
    )
    md += ["", "## Data", "", "| stage | classes | trained on | tested on |", "|---|---|---|---|"]
    for r in rows if not seeds else [r for r in rows if r["seed"] == seeds[0]]:
        d = r.get("data") or {}
        md.append(
            f"| {r['index']}_{r['name']} | {', '.join(d.get('classes') or [])} | "
            f"{_data_cell(d.get('train'))} | {_data_cell(d.get('test'))} |"
        )
    md += [
        "",
        "## Training",
        "",
        "| stage run | this run | iterations | wall time (s) of its training run | final total loss |"
        " loss_classifier | loss_mask |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fl = r.get("final_losses") or {}
        md.append(
            f"| {r['label']} | {r['action']} | {r.get('iterations_done', 0)}/{r.get('iterations')} | "
            f"{_fmt(r.get('wall_s'), 1)} | {_fmt(fl.get('total_loss'))} | "
            f"{_fmt(fl.get('loss_classifier'))} | {_fmt(fl.get('loss_mask'))} |"
        )
    md += [
        "",
        "## Held-out metrics",
        "",
        "| stage run | test set | segm AP | AP50 | AP75 | AP per class | cell F1@0.5 | PQ@0.5 | DSB score |"
        " phase bal. acc. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for ds, m in (r.get("metrics") or {}).items():
            per = ", ".join(f"{k[8:]} {v:.3f}" for k, v in m.items() if k.startswith("segm/AP-"))
            md.append(
                f"| {r['label']} | {ds} | {_fmt(m.get('segm/AP'))} | {_fmt(m.get('segm/AP50'))} | "
                f"{_fmt(m.get('segm/AP75'))} | {per or '–'} | {_fmt(m.get('cells/f1@0.5'))} | "
                f"{_fmt(m.get('cells/pq@0.5'))} | {_fmt(m.get('cells/dsb_score'))} | "
                f"{_fmt(m.get('phases/balanced_accuracy'))} |"
            )
    if seeds:
        md += ["", f"## Comparison over seeds {seeds} (mean ± sd, then each seed's value)", ""]
        md += comparison_table(comparison_rows(rows)).splitlines()
    md += ["", "## Pictures", ""]
    for title, key in (
        ("Loss curves", "loss_png"),
        ("Held-out metrics per stage", "metrics_png"),
        ("Phase confusion of the last stage", "confusion_png"),
    ):
        if pictures.get(key):
            md += [f"**{title}**", "", f"![{title}]({_rel(Path(pictures[key]), root)})", ""]
    if pictures.get("overlays"):
        md += ["**Predictions of the last stage on held-out frames** (outline colour = predicted class)", ""]
        md += [f"![overlay]({_rel(Path(p), root)})" for p in pictures["overlays"]] + [""]
    return "\n".join(md) + "\n"


def write_report(root: str | os.PathLike, summary: dict[str, Any], overlays: int = 3) -> dict[str, Any]:
    """Write ``campaign_report.md``, ``loss_curves.png``, ``heldout_metrics.png`` and the
    overlays under ``root``; returns their paths (keys ``report``, ``loss_png``, ``metrics_png``,
    ``confusion_png``, ``overlays``) for the summary."""
    root = Path(root)
    rows = summary["stages"]
    pics: dict[str, Any] = {"loss_png": None, "metrics_png": None, "confusion_png": None, "overlays": []}
    if not rows:
        return pics
    pics["loss_png"] = plot_losses(rows, root / "loss_curves.png")
    comp = comparison_rows(rows)
    pics["metrics_png"] = plot_comparison(comp, root / "heldout_metrics.png", HEADLINE)
    last = rows[-1]
    conf = sorted(Path(last["output_dir"]).glob("eval/*/phase_confusion.png"))
    pics["confusion_png"] = conf[0] if conf else None
    try:
        pics["overlays"] = write_overlays(rows, root / OVERLAYS, overlays) if overlays else []
    except Exception as exc:  # pictures are a courtesy: a failed overlay must not lose the report
        logger.warning("No prediction overlays in the report: %s", exc)
    report = write_text_atomic(root / "campaign_report.md", render_markdown(summary, root, pics))
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in pics.items()}
    out["overlays"] = [str(p) for p in pics["overlays"]]
    out["report"] = str(report)
    logger.info("Campaign report: %s", report)
    return out
