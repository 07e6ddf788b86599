"""Evaluate label-image folders (ground truth vs prediction) and write a report people can read.

``evaluate_label_folders(gt, pred, out)`` pairs files by name, runs :mod:`cell_metrics` and
writes into ``out``: ``metrics.json`` (every number), ``report.md`` (tables + links to the
PNGs), ``f1_vs_iou.png`` (precision / recall / F1 / PQ over IoU thresholds),
``count_errors.png`` (per-image predicted − true counts) and ``worst_images.png`` (the images
with the lowest F1@0.5, ground truth outlined green, prediction magenta).

The ground truth may also be a prepared dataset (a COCO JSON path or a dataset name): its
frames are named as the prediction tool names them (``<image_id>_labels.tif``), and when the
prediction folder holds the tool's ``objects.csv`` the phases of matched nuclei are compared
too (``phases`` in ``metrics.json``, ``phase_confusion.png``), by class name.

Pairing: a file's key is its stem with a trailing ``_labels``, ``_label``, ``_masks``, ``_mask``
or ``_seg`` removed, so ``img01.tif`` (ground truth) pairs with ``img01_labels.tif`` (the
prediction tool's output). Both folders must hold the same keys (a missing partner is an error
naming it, not a silent skip).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pcna_seg.errors import DataError
from pcna_seg.evaluation.cell_metrics import CellEvaluator, FrameResult
from pcna_seg.evaluation.report import pyplot, save_figure
from pcna_seg.utils_io import (
    check_output_folder,
    output_folder,
    write_json_atomic,
    write_text_atomic,
)

logger = logging.getLogger(__name__)
LABEL_SUFFIXES = ("tif", "tiff", "png")
_KEY_RE = re.compile(r"_(labels?|masks?|seg)$")


def label_key(path: Path) -> str:
    """The pairing key of a label file: its stem without a trailing ``_labels``-like tag."""
    stem = path.name.split(".")[0]
    return _KEY_RE.sub("", stem)


def list_label_files(folder: str | os.PathLike) -> dict[str, Path]:
    """``{key: path}`` for the label images in ``folder`` (TIFF or PNG); DataError when none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"Label folder not found: {folder}")
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower().lstrip(".") in LABEL_SUFFIXES and not p.name.startswith("."):
            if "_overlay" in p.stem:  # the prediction tool's pictures, not labels
                continue
            key = label_key(p)
            if key in files:
                raise DataError(
                    f"Two label files in {folder} pair as {key!r}: {files[key].name} and {p.name}"
                )
            files[key] = p
    if not files:
        raise DataError(f"No label images (*.tif, *.tiff, *.png) in {folder}")
    return files


def read_labels(path: Path) -> np.ndarray:
    """A 2-D integer label image; DataError naming the file otherwise."""
    from pcna_seg.data.image_io import read_image

    arr = np.squeeze(np.asarray(read_image(path)))  # DataError names a missing or corrupt file
    if arr.ndim != 2:
        raise DataError(f"Label image {path} has shape {arr.shape}; expected one (H, W) plane")
    if arr.dtype == bool or (arr.size and arr.max() == 1 and arr.min() == 0 and arr.dtype == np.uint8):
        logger.warning(
            "%s is a binary mask, not instance labels: touching nuclei count as one; label them first",
            path,
        )
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise DataError(f"Label image {path} holds non-integer values ({arr.dtype})")
        arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise DataError(f"Label image {path} holds negative labels (min {arr.min()}); 0 is background")
    return arr


def dataset_truth(
    spec: str | os.PathLike, root: str | None = None
) -> tuple[dict[str, tuple[np.ndarray, dict[int, int]]], list[str]]:
    """Ground truth of a prepared dataset (COCO JSON path or name): ``({frame key: (labels,
    {label: class index})}, class names)``; keys as the prediction tool names its frames."""
    from pcna_seg.data.catalog import get_metadata
    from pcna_seg.data.coco_io import load_coco
    from pcna_seg.data.structures import segmentation_to_mask
    from pcna_seg.inference.writers import frame_key

    path = Path(spec)
    if path.suffix.lower() != ".json":
        path = Path(get_metadata(str(spec), root).get("json_file", ""))
    records, meta = load_coco(path)
    truth: dict[str, tuple[np.ndarray, dict[int, int]]] = {}
    for rec in records:
        h, w = int(rec["height"]), int(rec["width"])
        labels = np.zeros((h, w), np.int32)
        classes: dict[int, int] = {}
        for k, ann in enumerate(a for a in rec.get("annotations", []) if not a.get("iscrowd", 0)):
            labels[segmentation_to_mask(ann["segmentation"], h, w)] = k + 1
            classes[k + 1] = int(ann["category_id"])
        truth[frame_key(rec)] = (labels, classes)
    return truth, list(meta.get("thing_classes") or [])


def predicted_phases(pred: Path, class_names: Sequence[str]) -> dict[str, dict[int, int]] | None:
    """``{frame: {object: class index}}`` from the prediction tool's ``objects.csv`` (None if absent).

    Phases map to ``class_names`` by name; a phase the ground truth does not know is an error.
    """
    import csv

    path = pred / "objects.csv"
    if not path.is_file():
        return None
    index = {n: i for i, n in enumerate(class_names)}
    out: dict[str, dict[int, int]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["phase"] not in index:
                raise DataError(
                    f"{path} calls objects {row['phase']!r}, not a class of the ground truth "
                    f"({list(class_names)})"
                )
            out.setdefault(row["frame"], {})[int(row["object"])] = index[row["phase"]]
    return out


def plot_phase_confusion(phases: dict[str, Any], out_png: Path) -> Path:
    from pcna_seg.evaluation.report import plot_confusion

    conf = {
        "rows": phases["class_names"],
        "columns": phases["class_names"],
        "matrix": phases["confusion"],
        "accuracy": phases["accuracy"],
        "iou_thresh": 0.5,
    }
    return plot_confusion(conf, out_png)


def pair_folders(gt: str | os.PathLike, pred: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """(key, gt path, pred path) for every key; DataError naming the first unpaired file."""
    g, p = list_label_files(gt), list_label_files(pred)
    for a, b, name in ((g, p, "prediction"), (p, g, "ground truth")):
        missing = sorted(set(a) - set(b))
        if missing:
            raise DataError(
                f"{len(missing)} label image(s) have no {name} partner, e.g. {a[missing[0]]} "
                f"(files pair by name without a trailing _labels/_mask tag)"
            )
    return [(k, g[k], p[k]) for k in sorted(g)]


def _outline(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    return find_boundaries(labels, mode="inner")


def plot_curves(cells: dict[str, Any], out_png: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("precision", "recall", "f1", "pq"):
        ax.plot(cells["thresholds"], cells[key], marker="o", label=key)
    ax.set(xlabel="IoU threshold", ylabel="score", ylim=(0, 1.02), title="matching quality vs IoU threshold")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, out_png, dpi=100)


def plot_count_errors(frames: Sequence[FrameResult], out_png: Path) -> Path:
    plt = pyplot()
    err = [f.n_pred - f.n_gt for f in frames]
    fig, ax = plt.subplots(figsize=(6, 4))
    lo, hi = min(err + [0]), max(err + [0])
    ax.hist(err, bins=np.arange(lo - 0.5, hi + 1.5, max(1, (hi - lo + 1) // 30)), color="tab:blue")
    ax.axvline(0, color="k", lw=1)
    ax.set(xlabel="predicted − true nuclei per image", ylabel="images", title="count errors")
    fig.tight_layout()
    return save_figure(fig, out_png, dpi=100)


def plot_worst(
    pairs: Sequence[tuple[str, Path, Path]],
    per_frame: list[dict],
    out_png: Path,
    n: int = 6,
    truth: dict[str, tuple[np.ndarray, dict[int, int]]] | None = None,
) -> Path:
    """Gallery of the ``n`` images with the lowest F1@0.5: gt outlines green, prediction magenta.

    ``truth``: ground-truth label images by key (dataset ground truth), else read from the pairs.
    """
    plt = pyplot()
    order = sorted(range(len(per_frame)), key=lambda i: per_frame[i]["f1@0.5"])[:n]
    fig, axes = plt.subplots(1, len(order), figsize=(3.2 * len(order), 3.6), squeeze=False)
    for ax, i in zip(axes[0], order):
        key, gt_path, pred_path = pairs[i]
        gt = truth[key][0] if truth else read_labels(gt_path)
        pred = read_labels(pred_path)
        rgb = np.zeros((*gt.shape, 3), dtype=np.float32)
        rgb[gt > 0] = 0.18  # nuclei in dark grey, so misses are visible as filled shapes
        rgb[_outline(gt)] = (0.1, 0.9, 0.1)
        rgb[_outline(pred)] = (1.0, 0.1, 1.0)
        ax.imshow(rgb, interpolation="nearest")
        f = per_frame[i]
        ax.set_title(
            f"{f['name']}\nF1@0.5 {f['f1@0.5']:.2f}  gt {f['n_gt']} / pred {f['n_pred']}", fontsize=8
        )
        ax.axis("off")
    fig.suptitle("worst images (green: ground truth, magenta: prediction)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return save_figure(fig, out_png, dpi=100)


def markdown_report(
    cells: dict[str, Any], gt: str, pred: str, criterion: str, phases: dict[str, Any] | None = None
) -> str:
    rule = ">" if criterion == "gt" else "≥"
    lines = [
        "# Cell-level evaluation",
        "",
        f"Ground truth `{gt}`, prediction `{pred}`: {cells['n_frames']} images, {cells['n_gt']} true and "
        f"{cells['n_pred']} predicted nuclei. A match needs IoU {rule} threshold (one-to-one, optimal).",
        "",
        "| metric | value |",
        "|---|---|",
        f"| F1 @ IoU 0.5 | {cells['f1@0.5']:.3f} |",
        f"| precision / recall @ 0.5 | {cells['precision'][0]:.3f} / {cells['recall'][0]:.3f} |",
        f"| panoptic quality @ 0.5 | {cells['pq@0.5']:.3f} |",
        f"| DSB2018 score (mean over 0.5:0.05:0.95, per image) | {cells['dsb_score']:.3f} |",
        f"| SEG (Cell Tracking Challenge) | {cells['seg']:.3f} |",
        f"| count MAE per image | {cells['count_mae']:.2f} |",
        f"| count relative error | {cells['count_rel_error']:.3f} |",
        "",
        "| IoU | precision | recall | F1 | PQ | TP | FP | FN |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, t in enumerate(cells["thresholds"]):
        lines.append(
            f"| {t:.2f} | {cells['precision'][i]:.3f} | {cells['recall'][i]:.3f} | {cells['f1'][i]:.3f} | "
            f"{cells['pq'][i]:.3f} | {cells['tp'][i]} | {cells['fp'][i]} | {cells['fn'][i]} |"
        )
    if phases:
        names = phases["class_names"]
        lines += [
            "",
            f"## Phases of the {phases['n_matched']} nuclei matched at IoU 0.5",
            "",
            f"Accuracy {phases['accuracy']:.3f}, balanced accuracy {phases['balanced_accuracy']:.3f}.",
            "",
            "| phase | precision | recall | F1 | true nuclei |",
            "|---|---|---|---|---|",
            *[
                f"| {n} | {phases['precision'][n]:.3f} | {phases['recall'][n]:.3f} | {phases['f1'][n]:.3f} | "
                f"{phases['support'][n]} |"
                for n in names
            ],
            "",
            "![phase confusion](phase_confusion.png)",
        ]
    lines += [
        "",
        "![F1 vs IoU](f1_vs_iou.png)",
        "",
        "![count errors](count_errors.png)",
        "",
        "![worst images](worst_images.png)",
        "",
    ]
    return "\n".join(lines)


def evaluate_label_folders(
    gt: str | os.PathLike,
    pred: str | os.PathLike,
    output: str | os.PathLike,
    criterion: str = "gt",
    overwrite: bool = False,
    datasets_root: str | None = None,
) -> dict[str, Any]:
    """Evaluate every paired label image and write the report folder; returns the metrics.

    ``gt``: a folder of label images, or a prepared dataset (COCO JSON path / dataset name).
    """
    pred = Path(pred)
    check_output_folder(output, overwrite=overwrite, inputs=[gt, pred])  # refusals before any work
    if Path(gt).resolve() == pred.resolve():
        logger.warning("--gt and --pred are the same (%s): every score will be 1", pred)
    gt_is_folder = Path(gt).is_dir()
    looks_like_path = os.sep in str(gt) or "/" in str(gt) or Path(gt).suffix.lower() == ".json"
    if not gt_is_folder and looks_like_path and not Path(gt).is_file():
        raise DataError(
            f"Ground truth not found: {gt} (a folder of label images, a COCO JSON or a dataset name)"
        )
    if gt_is_folder:
        pairs = pair_folders(gt, pred)  # every input problem is found before the output is touched
        truth: dict[str, tuple[np.ndarray, dict[int, int]]] = {}
        class_names: list[str] = []
        pred_phases = None
    else:
        truth, class_names = dataset_truth(gt, datasets_root)
        files = list_label_files(pred)
        missing = sorted(set(truth) - set(files))
        if missing:
            raise DataError(
                f"{len(missing)} frame(s) of {gt} have no predicted label image in {pred}, e.g. "
                f"{missing[0]}_labels.tif (predict the dataset with tools/predict_net.py --input {gt})"
            )
        pairs = [(k, Path(str(gt)), files[k]) for k in sorted(truth)]
        pred_phases = predicted_phases(pred, class_names)
    ev = CellEvaluator(class_names=class_names if pred_phases is not None else (), criterion=criterion)
    for key, gt_path, pred_path in pairs:
        g, classes = (read_labels(gt_path), None) if gt_is_folder else truth[key]
        p = read_labels(pred_path)
        if g.shape != p.shape:
            raise DataError(f"{pred_path} is {p.shape} but its ground truth for {key} is {g.shape}")
        ev.process(g, p, key, classes, None if pred_phases is None else pred_phases.get(key, {}))
    result = ev.evaluate()
    cells = result["cells"]
    metrics = {"gt": str(gt), "pred": str(pred), "criterion": criterion, **result}
    with output_folder(output, overwrite=overwrite, inputs=[gt, pred]) as out:
        write_json_atomic(out / "metrics.json", metrics, indent=1)
        plot_curves(cells, out / "f1_vs_iou.png")
        plot_count_errors(ev.frames, out / "count_errors.png")
        plot_worst(pairs, cells["per_frame"], out / "worst_images.png", truth=truth)
        if "phases" in result:
            plot_phase_confusion(result["phases"], out / "phase_confusion.png")
        write_text_atomic(
            out / "report.md", markdown_report(cells, str(gt), str(pred), criterion, result.get("phases"))
        )
    logger.info("Cell metrics for %d images written to %s", len(pairs), output)
    return metrics
