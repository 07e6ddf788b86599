"""Evaluate label-image folders (ground truth vs prediction) and write a report people can read.

``evaluate_label_folders(gt, pred, out)`` pairs files by name, runs :mod:`cell_metrics` and
writes into ``out``: ``metrics.json`` (every number), ``report.md`` (tables + links to the
PNGs), ``f1_vs_iou.png`` (precision / recall / F1 / PQ over IoU thresholds),
``count_errors.png`` (per-image predicted − true counts) and ``worst_images.png`` (the images
with the lowest F1@0.5, ground truth outlined green, prediction magenta).

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
from pcna_seg.evaluation.report import _pyplot
from pcna_seg.utils_io import atomic_path, output_folder, write_json_atomic, write_text_atomic

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
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise DataError(f"Label image {path} holds non-integer values ({arr.dtype})")
        arr = arr.astype(np.int64)
    return arr


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
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("precision", "recall", "f1", "pq"):
        ax.plot(cells["thresholds"], cells[key], marker="o", label=key)
    ax.set(xlabel="IoU threshold", ylabel="score", ylim=(0, 1.02), title="matching quality vs IoU threshold")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out_png


def plot_count_errors(frames: Sequence[FrameResult], out_png: Path) -> Path:
    plt = _pyplot()
    err = [f.n_pred - f.n_gt for f in frames]
    fig, ax = plt.subplots(figsize=(6, 4))
    lo, hi = min(err + [0]), max(err + [0])
    ax.hist(err, bins=np.arange(lo - 0.5, hi + 1.5, max(1, (hi - lo + 1) // 30)), color="tab:blue")
    ax.axvline(0, color="k", lw=1)
    ax.set(xlabel="predicted − true nuclei per image", ylabel="images", title="count errors")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out_png


def plot_worst(
    pairs: Sequence[tuple[str, Path, Path]], per_frame: list[dict], out_png: Path, n: int = 6
) -> Path:
    """Gallery of the ``n`` images with the lowest F1@0.5: gt outlines green, prediction magenta."""
    plt = _pyplot()
    order = sorted(range(len(per_frame)), key=lambda i: per_frame[i]["f1@0.5"])[:n]
    fig, axes = plt.subplots(1, len(order), figsize=(3.2 * len(order), 3.6), squeeze=False)
    for ax, i in zip(axes[0], order):
        _, gt_path, pred_path = pairs[i]
        gt, pred = read_labels(gt_path), read_labels(pred_path)
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
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out_png


def markdown_report(cells: dict[str, Any], gt: str, pred: str, criterion: str) -> str:
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
) -> dict[str, Any]:
    """Evaluate every paired label image and write the report folder; returns the metrics."""
    pairs = pair_folders(gt, pred)  # every input problem is found before the output is touched
    ev = CellEvaluator(criterion=criterion)
    for key, gt_path, pred_path in pairs:
        g, p = read_labels(gt_path), read_labels(pred_path)
        if g.shape != p.shape:
            raise DataError(f"{pred_path} is {p.shape} but its ground truth {gt_path} is {g.shape}")
        ev.process(g, p, key)
    cells = ev.evaluate()["cells"]
    metrics = {"gt": str(gt), "pred": str(pred), "criterion": criterion, "cells": cells}
    with output_folder(output, overwrite=overwrite) as out:
        write_json_atomic(out / "metrics.json", metrics, indent=1)
        plot_curves(cells, out / "f1_vs_iou.png")
        plot_count_errors(ev.frames, out / "count_errors.png")
        plot_worst(pairs, cells["per_frame"], out / "worst_images.png")
        write_text_atomic(out / "report.md", markdown_report(cells, str(gt), str(pred), criterion))
    logger.info("Cell metrics for %d images written to %s", len(pairs), output)
    return metrics
