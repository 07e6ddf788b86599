"""The demo behind ``make demo``: synthetic data in every format → converters → summary and
contact sheet → a quick stage-3 Mask R-CNN training on synthetic PCNA movies → COCO evaluation.

Everything is written under one output folder; nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pcna_seg.data.catalog import register_prepared_folder
from pcna_seg.data.coco_io import load_coco
from pcna_seg.data.converters import get_converter
from pcna_seg.data.synthetic import WRITERS, get_writer
from pcna_seg.data.visualize import contact_sheet
from pcna_seg.utils_io import write_json_atomic

logger = logging.getLogger(__name__)

PCNA_FORMAT = "pcna_masks"  # the format the demo trains on
DEMO_CONFIG = "configs/quick_schedules/quick_stage3_pcna.yaml"
# A shorter schedule than the quick config's 1000 iterations, so the demo ends in a few minutes
# (validation segm AP50 is ~0.75 at 400 iterations, 0.82 at 1000; pass SOLVER.MAX_ITER 1000 for more)
DEMO_SCHEDULE = ["SOLVER.MAX_ITER", "400", "SOLVER.STEPS", "(320,)", "TEST.EVAL_PERIOD", "200"]
# the PCNA movies trained on: the same size as benchmarks/quick_ap.py (8 movies × 4 frames, 256 px)
PCNA_SIZE = {"n_movies": 8, "n_frames": 4, "height": 256, "width": 256, "n_nuclei": 30}
# the synthetic DeepCell npz holds movies of 4 frames: tell the converter, so splits keep movies whole
CONVERT_OPTIONS = {"deepcell_npz": {"frames_per_movie": 4}}


def prepare_all_formats(out: Path, seed: int = 0) -> list[dict[str, Any]]:
    """Write every synthetic format, convert it, and return one summary row per format."""
    rows = []
    for fmt in sorted(WRITERS):
        t0 = time.perf_counter()
        raw, prepared = out / "raw" / fmt, out / "datasets" / fmt
        options = PCNA_SIZE if fmt == PCNA_FORMAT else {}
        gt = get_writer(fmt)(raw, seed=seed, **options)
        src = raw
        card = get_converter(fmt)(
            src, prepared, seed=seed, progress=False, overwrite=True, **CONVERT_OPTIONS.get(fmt, {})
        )
        records, meta = load_coco(prepared / "annotations.json")
        n_gt = sum(len(img.classes) for img in gt.images)
        n_conv = sum(len(r["annotations"]) for r in records)
        rows.append(
            {
                "format": fmt,
                "images": len(records),
                "instances": n_conv,
                "ground_truth_instances": n_gt,
                "classes": meta["thing_classes"],
                "split": card.get("split"),
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'format':<14} {'images':>6} {'instances':>9} {'truth':>6}  {'split (train/val)':<18} classes"
    print(header)
    print("-" * len(header))
    for r in rows:
        split = r.get("split") or {}
        sp = f"{split.get('train', '?')}/{split.get('val', '?')} by {split.get('by', '?')}"
        print(
            f"{r['format']:<14} {r['images']:>6} {r['instances']:>9} {r['ground_truth_instances']:>6}  "
            f"{sp:<18} {', '.join(r['classes'])}"
        )


def report_training(train_dir: Path) -> dict[str, Any]:
    """Print the held-out evaluation of the demo run and where its pictures are."""
    results_files = sorted((train_dir / "eval").glob("*/results.json"))
    if not results_files:
        return {}
    res = json.loads(results_files[-1].read_text())
    segm, bbox = res.get("segm", {}), res.get("bbox", {})
    print(f"\nHeld-out validation ({res.get('n_images', '?')} images of movies not seen in training):")
    print(f"  segm AP50 {segm.get('AP50', float('nan')):.3f}  AP {segm.get('AP', float('nan')):.3f}")
    print(f"  bbox AP50 {bbox.get('AP50', float('nan')):.3f}  AP {bbox.get('AP', float('nan')):.3f}")
    per_class = {k[3:]: v for k, v in segm.items() if k.startswith("AP-")}
    if per_class:
        print("  segm AP per phase: " + ", ".join(f"{k} {v:.3f}" for k, v in per_class.items()))
    cells, phases = res.get("cells") or {}, res.get("phases") or {}
    if cells:
        print(
            f"  cells: F1@0.5 {cells['f1@0.5']:.3f}  PQ@0.5 {cells['pq@0.5']:.3f}  DSB score "
            f"{cells['dsb_score']:.3f}  SEG {cells['seg']:.3f}  count MAE {cells['count_mae']:.2f}"
        )
    if phases:
        print(f"  phase balanced accuracy on matched nuclei {phases['balanced_accuracy']:.3f}")
    pictures = [train_dir / "curves.png", results_files[-1].parent / "phase_confusion.png"]
    for pic in pictures:
        if pic.is_file():
            print(f"  picture: {pic}")
    headline = {k: cells[k] for k in ("f1@0.5", "pq@0.5", "dsb_score", "seg", "count_mae") if k in cells}
    return {"segm": segm, "bbox": bbox, "cells": headline, "results": str(results_files[-1])}


def predict_validation(out: Path) -> dict[str, Any]:
    """Predict the held-out frames with the trained model, as tools/predict_net.py does."""
    from pcna_seg.inference import Predictor, find_inputs, load_predict_config, run_prediction

    weights = out / "train_stage3" / "model_final.pth"
    opts = ["MODEL.ROI_HEADS.NMS_CLASS_AGNOSTIC", "True", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.5"]
    cfg = load_predict_config(weights, None, opts)
    frames = find_inputs(str(out / "datasets" / PCNA_FORMAT / "val.json"), None)
    writer = run_prediction(
        Predictor(cfg, weights), frames, out / "predictions", progress=False, overwrite=True
    )
    print("\nPredicted phases on the held-out frames (tools/predict_net.py does the same on your movies):")
    print(writer.count_table())
    val_records, meta = load_coco(out / "datasets" / PCNA_FORMAT / "val.json")
    truth = Counter(meta["thing_classes"][a["category_id"]] for r in val_records for a in r["annotations"])
    print("  ground truth: " + ", ".join(f"{name} {truth.get(name, 0)}" for name in meta["thing_classes"]))
    overlays = sorted((out / "predictions").glob("*_overlay.png"))
    if overlays:
        print(f"  picture: {overlays[0]}  (+{len(overlays) - 1} more)")
    print(f"  objects: {out / 'predictions' / 'objects.csv'}")
    return {"counts": dict(writer.counts), "truth": dict(truth), "output": str(out / "predictions")}


def run_demo(out: Path, train: bool = True, seed: int = 0, opts: list[str] | None = None) -> dict[str, Any]:
    """Run the demo into ``out``; returns a summary dict (also written as summary.json).

    ``out`` belongs to the demo: a second run replaces each step's earlier result as a whole
    (every step is deterministic, so the numbers are the same), never mixing old and new files.
    """
    if out.is_dir() and any(out.iterdir()):
        print(f"{out} holds an earlier demo run: each step replaces its own earlier output")
    out.mkdir(parents=True, exist_ok=True)
    rows = prepare_all_formats(out, seed)
    print("\nSynthetic data in every on-disk format → converters → COCO:")
    print_table(rows)
    names = register_prepared_folder("demo_pcna", out / "datasets" / PCNA_FORMAT)
    records, meta = load_coco(out / "datasets" / PCNA_FORMAT / "annotations.json")
    sheet = contact_sheet(
        records, meta["thing_classes"], out / "contact_sheet_pcna.png", title="synthetic PCNA"
    )
    print(f"\ncontact sheet: {sheet}")
    summary: dict[str, Any] = {"formats": rows, "contact_sheet": str(sheet), "datasets": names}
    if train:
        from pcna_seg.engine.trainer import run_train_net  # heavy import only when training

        overrides = [
            "DATASETS.TRAIN",
            "('demo_pcna_train',)",
            "DATASETS.TEST",
            "('demo_pcna_val',)",
            "OUTPUT_DIR",
            str(out / "train_stage3"),
            *DEMO_SCHEDULE,
        ] + list(opts or [])
        run_train_net(DEMO_CONFIG, overrides, overwrite=True)
        summary["training"] = report_training(out / "train_stage3")
        summary["prediction"] = predict_validation(out)
    write_json_atomic(out / "summary.json", summary, indent=2, default=str)
    return summary
