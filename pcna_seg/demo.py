"""The demo behind ``make demo``: the staged campaign end to end, on synthetic data, offline.

1. Realistic synthetic data in the DSB2018, DeepCell and PCNA layouts (and every other format
   the project reads), converted by the real converters (:mod:`pcna_seg.campaign.data`).
2. The quick three-stage campaign (Kaggle nuclei → DeepCell nuclei → PCNA phases) run with
   ``tools/run_campaign.py`` exactly as a user would, which writes ``campaign_report.md``.
3. The held-out PCNA movies predicted with the stage-3 model (label TIFFs, objects CSV, overlays).
4. The quick live/dead U-Net chain: ``make_livedead.py`` → ``tile_h5.py`` → ``train_unet.py`` →
   ``predict_unet.py`` (per-frame live/dead counts).

Every step is reused on a second run when what made it is unchanged: data by its recipe
(``made_by.json``), campaign stages by their fingerprints, tiles by ``tile_h5.py``'s job record,
the U-Net by a fingerprint of its tiles and settings. Prediction is cheap and always redone.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pcna_seg.campaign.data import CAMPAIGN_SETS, DEMO_SETS, EXTRA_SETS, data_table, prepare_campaign_data
from pcna_seg.errors import PcnaSegError
from pcna_seg.utils_io import file_stats, fingerprint, write_json_atomic

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
CAMPAIGN = "configs/campaigns/quick_pcna_staged.yaml"
# Every stage of the demo campaign trains this long (the quick configs say 1000): the demo ends
# in minutes on 2 CPU cores. Train longer: tools/demo.py SOLVER.MAX_ITER 1000 SOLVER.STEPS "(800,)"
DEMO_SCHEDULE = ["SOLVER.MAX_ITER", "300", "SOLVER.STEPS", "(240,)", "TEST.EVAL_PERIOD", "0",
                 "SOLVER.CHECKPOINT_PERIOD", "300", "DATALOADER.NUM_WORKERS", "0"]  # fmt: skip
UNET_CONFIG = "configs/unet/livedead_quick.yaml"
LIVEDEAD = ["--wells", "A1", "A2", "B1", "B2", "--height", "256", "--width", "256", "--seed", "0"]
UNET_OPTS = ["UNET.SOLVER.EPOCHS", "3", "UNET.SOLVER.T_0", "2"]
MADE_BY = "made_by.json"


def _tool(args: list[str], log: Path) -> str:
    """Run ``tools/<args[0]>`` in a child process (its stderr appended to ``log``); its stdout.
    A failure is a PcnaSegError with the child's ``error:`` line and where the log is."""
    cmd = [sys.executable, str(REPO / "tools" / args[0]), *args[1:]]
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True, cwd=REPO)
    if proc.returncode != 0:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        why = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "")
        raise PcnaSegError(
            f"{args[0]} failed (exit {proc.returncode}): {why.removeprefix('error: ')} (log: {log})"
        )
    return proc.stdout


def _same(folder: Path, made_by: dict[str, Any]) -> bool:
    path = folder / MADE_BY
    try:
        return json.loads(path.read_text(encoding="utf-8")) == made_by
    except (OSError, ValueError):
        return False


def campaign_args(out: Path, opts: list[str]) -> list[str]:
    """``tools/run_campaign.py`` arguments of the demo's campaign (``--overwrite``: the folder is
    the demo's, so a stage whose inputs changed is retrained; unchanged ones are skipped)."""
    root, camp = str(out / "datasets"), str(out / "campaign")
    return ["run_campaign.py", "--config-file", CAMPAIGN, "--overwrite", "DATASETS.ROOT", root,
            "OUTPUT_DIR", camp, *DEMO_SCHEDULE, *opts]  # fmt: skip


def run_campaign_step(out: Path, opts: list[str]) -> dict[str, Any]:
    """The quick campaign via ``tools/run_campaign.py``; returns its ``campaign_summary.json``."""
    _tool(campaign_args(out, opts), out / "logs" / "campaign.log")
    return json.loads((out / "campaign" / "campaign_summary.json").read_text(encoding="utf-8"))


def campaign_table(summary: dict[str, Any]) -> str:
    """One line per stage: what the run did, iterations, wall time and held-out metrics."""
    head = (f"{'stage':<26} {'this run':<9} {'iters':>5} {'train s':>7}  {'segm AP50':>9} {'AP75':>5} "
            f"{'cell F1':>7} {'PQ':>5} {'DSB':>5} {'phase bacc':>10}  AP per class")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in summary["stages"]:
        m = next(iter((r.get("metrics") or {}).values()), {})

        def f(key: str, w: int, m: dict = m) -> str:
            return f"{m[key]:>{w}.3f}" if key in m else f"{'-':>{w}}"

        per = ", ".join(f"{k[8:]} {v:.2f}" for k, v in m.items() if k.startswith("segm/AP-"))
        wall = f"{r['wall_s']:>7.0f}" if r.get("wall_s") is not None else f"{'-':>7}"
        did = "reused" if r["action"] == "skip" else r["action"]
        lines.append(
            f"{r['index']}_{r['name']:<24} {did:<9} {r.get('iterations_done', 0):>5} {wall}  "
            f"{f('segm/AP50', 9)} {f('segm/AP75', 5)} {f('cells/f1@0.5', 7)} {f('cells/pq@0.5', 5)} "
            f"{f('cells/dsb_score', 5)} {f('phases/balanced_accuracy', 10)}  {per}"
        )
    return "\n".join(lines)


def predict_held_out(out: Path, weights: Path) -> dict[str, Any]:
    """Predict the held-out PCNA frames with the stage-3 model, as tools/predict_net.py does."""
    from pcna_seg.data.coco_io import load_coco
    from pcna_seg.inference import Predictor, find_inputs, load_predict_config, run_prediction

    opts = ["MODEL.ROI_HEADS.NMS_CLASS_AGNOSTIC", "True", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.5"]
    cfg = load_predict_config(weights, None, opts)
    val_json = out / "datasets" / "pcna_stage3" / "val.json"
    frames = find_inputs(str(val_json), None)
    writer = run_prediction(
        Predictor(cfg, weights), frames, out / "predictions", progress=False, overwrite=True
    )
    records, meta = load_coco(val_json)
    truth = Counter(meta["thing_classes"][a["category_id"]] for r in records for a in r["annotations"])
    return {"table": writer.count_table(), "counts": dict(writer.counts), "truth": dict(truth),
            "classes": meta["thing_classes"], "frames": len(frames)}  # fmt: skip


def run_unet_chain(out: Path) -> dict[str, Any]:
    """make_livedead → tile_h5 → train_unet → predict_unet, each reused when unchanged."""
    base, log = out / "livedead", out / "logs" / "unet.log"
    frames, tiles, train, pred = base / "frames", base / "tiles.h5", base / "train", base / "predictions"
    base.mkdir(parents=True, exist_ok=True)
    steps: dict[str, str] = {}
    want = {"args": LIVEDEAD}
    if _same(frames, want):
        steps["frames"] = "reused"
    else:
        _tool(["make_livedead.py", str(frames), *LIVEDEAD, "--overwrite"], log)
        write_json_atomic(frames / MADE_BY, want)
        steps["frames"] = "written"
    split = [tiles.with_name("tiles_train.h5"), tiles.with_name("tiles_val.h5")]
    before = [p.stat().st_mtime_ns if p.is_file() else None for p in split]
    cfg = ["--config-file", UNET_CONFIG]
    _tool(["tile_h5.py", *cfg, "--frames", str(frames), "--out", str(tiles), "--overwrite"], log)
    steps["tiles"] = "reused" if before == [p.stat().st_mtime_ns for p in split] else "written"
    opts = ["OUTPUT_DIR", str(train), "UNET.DATA.TRAIN_H5", str(split[0]), "UNET.DATA.VAL_H5", str(split[1]),
            *UNET_OPTS]  # fmt: skip
    want = {
        "opts": opts,
        "tiles": fingerprint(file_stats(split)),
        "config": fingerprint(file_stats([REPO / UNET_CONFIG])),
    }
    if _same(train, want) and (train / "model_final.pth").is_file():
        steps["training"] = "reused"
    else:
        _tool(["train_unet.py", *cfg, "--overwrite", *opts], log)
        write_json_atomic(train / MADE_BY, want)
        steps["training"] = "trained"
    _tool(["predict_unet.py", *cfg, "--weights", str(train / "model_final.pth"), "--input", str(frames),
           "--output", str(pred), "--overwrite", *opts], log)  # fmt: skip
    steps["prediction"] = "predicted"
    return {"steps": steps, "metrics": _unet_metrics(train), "counts_csv": str(pred / "counts.csv"),
            "pictures": [str(p) for p in (train / "pr_curves.png", train / "loss.png") if p.is_file()]
            + [str(p) for p in sorted(pred.glob("*_overlay.png"))[:1]]}  # fmt: skip


def _unet_metrics(train: Path) -> dict[str, float]:
    lines = [json.loads(ln) for ln in (train / "metrics.json").read_text().splitlines() if ln.strip()]
    last = lines[-1] if lines else {}
    return {k: float(v) for k, v in last.items() if k.split("/")[0] in ("pr_auc", "iou", "val_loss", "epoch")}


def unet_table(unet: dict[str, Any]) -> str:
    """Validation metrics of the last epoch and the predicted vs true counts per frame."""
    import csv

    m = unet["metrics"]
    classes = sorted({k.split("/", 1)[1] for k in m if k.startswith("pr_auc/")})
    lines = [f"{'class':<10} {'PR-AUC':>7} {'IoU':>6}"] + [
        f"{c:<10} {m.get(f'pr_auc/{c}', float('nan')):>7.3f} {m.get(f'iou/{c}', float('nan')):>6.3f}"
        for c in classes
    ]
    with open(unet["counts_csv"], encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows:
        cols = [c for c in ("frame", "n_live", "true_live", "n_dead", "true_dead") if c in rows[0]]
        lines += ["", "  ".join(f"{c:>9}" for c in cols)]
        lines += ["  ".join(f"{r[c]:>9}" for c in cols) for r in rows]
    return "\n".join(lines)


def run_demo(
    out: Path,
    seed: int = 0,
    opts: list[str] | None = None,
    unet: bool = True,
    emit: Callable[[str], None] = logger.info,
) -> dict[str, Any]:
    """Run the demo into ``out`` (see the module docstring); hands each table to ``emit``
    (``print`` in tools/demo.py), returns the summary also written to ``out/summary.json``."""
    print = emit  # noqa: A001  (the tables go wherever the caller wants them)
    t0 = time.perf_counter()
    out = Path(out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    print(f"[1/4] synthetic data (realistic simulator) → real converters → {out / 'datasets'}")
    rows = prepare_campaign_data(out / "datasets", out / "raw", [*DEMO_SETS, *EXTRA_SETS], seed)
    print(data_table(rows))
    from pcna_seg.data.coco_io import load_coco
    from pcna_seg.data.visualize import contact_sheet

    records, meta = load_coco(out / "datasets" / "pcna_stage3" / "annotations.json")
    sheet = contact_sheet(
        records, meta["thing_classes"], out / "contact_sheet_pcna.png", title="synthetic PCNA"
    )
    print(f"  contact sheet of the PCNA frames (outlines coloured by phase): {sheet}")
    summary: dict[str, Any] = {"data": rows, "contact_sheet": str(sheet)}
    print(
        "\n[2/4] quick three-stage campaign (Kaggle nuclei → DeepCell nuclei → PCNA phases):\n  python tools/"
        + shlex.join(campaign_args(out, list(opts or [])))
    )
    camp = run_campaign_step(out, list(opts or []))
    print(campaign_table(camp))
    skipped = [r for r in camp["stages"] if r["action"] == "skip"]
    if skipped:
        print(f"  ({len(skipped)} of {len(camp['stages'])} stages reused: unchanged since they were trained)")
    print(f"  report: {camp.get('report')}")
    summary["campaign"] = {
        "summary": str(out / "campaign" / "campaign_summary.json"),
        "report": camp.get("report"),
    }
    weights = Path(camp["stages"][-1]["output_dir"]) / "model_final.pth"
    print(f"\n[3/4] held-out PCNA movies predicted with {weights}")
    pred = predict_held_out(out, weights)
    print(pred["table"])
    print("  ground truth: " + ", ".join(f"{c} {pred['truth'].get(c, 0)}" for c in pred["classes"]))
    print(f"  label TIFFs, objects.csv and overlays: {out / 'predictions'}")
    summary["prediction"] = {k: pred[k] for k in ("counts", "truth", "frames")}
    if unet:
        print("\n[4/4] live/dead U-Net: make_livedead.py → tile_h5.py → train_unet.py → predict_unet.py")
        u = run_unet_chain(out)
        print("  " + ", ".join(f"{k} {v}" for k, v in u["steps"].items()))
        print(unet_table(u))
        print("  pictures: " + ", ".join(u["pictures"]))
        summary["unet"] = u
    wall = time.perf_counter() - t0
    summary["wall_s"] = round(wall, 1)
    write_json_atomic(out / "summary.json", summary, indent=2, default=str)
    print(
        f"\nPictures to look at: {out / 'campaign' / 'campaign_report.md'} (links its PNGs), "
        f"{out / 'predictions'}/*_overlay.png"
    )
    print(f"Logs of every step: {out / 'logs'}")
    print(f"demo wall time: {wall:.0f} s ({wall / 60:.1f} min)")
    return summary


__all__ = ["CAMPAIGN_SETS", "run_demo"]
