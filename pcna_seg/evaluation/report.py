"""Training reports as PNG: loss/LR/AP curves from ``metrics.json`` and the phase confusion matrix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pcna_seg.utils_io import atomic_path


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out_png: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG atomically, close it, and return the path."""
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
    return out_png


def plot_training_curves(metrics_json: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Three panels: losses (total and each ``loss_*``), LR, and AP metrics (``bbox/*``, ``segm/*``).

    ``metrics_json``: detectron2-style metrics file, one JSON object per line.
    """
    from pcna_seg.engine.writers import read_metrics

    rows = read_metrics(metrics_json)
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    loss_keys = sorted({k for r in rows for k in r if k == "total_loss" or k.startswith("loss_")})
    for key in loss_keys:
        pts = [(r["iteration"], r[key]) for r in rows if key in r]
        axes[0].plot(*zip(*pts), label=key, lw=2.0 if key == "total_loss" else 1.0)
    axes[0].set(title="training losses", xlabel="iteration", ylabel="loss")
    if loss_keys:
        axes[0].legend(fontsize=7)
    lr = [(r["iteration"], r["lr"]) for r in rows if "lr" in r]
    if lr:
        axes[1].plot(*zip(*lr))
    axes[1].set(title="learning rate", xlabel="iteration")
    ap_keys = sorted({k for r in rows for k in r if k.split("/")[-1] in ("AP", "AP50", "AP75") and "/" in k})
    for key in ap_keys:
        pts = [(r["iteration"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            axes[2].plot(*zip(*pts), marker="o", label=key)
    axes[2].set(title="validation AP", xlabel="iteration", ylim=(0, 1))
    if ap_keys:
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out_png, dpi=100)


def plot_confusion(confusion: dict[str, Any], out_png: str | os.PathLike) -> Path:
    """Heat map of a phase confusion dict (``rows``, ``columns``, ``matrix``) with counts."""
    plt = pyplot()
    mat = np.asarray(confusion["matrix"])
    fig, ax = plt.subplots(figsize=(1.2 * mat.shape[1] + 2, 1.0 * mat.shape[0] + 1.5))
    ax.imshow(mat, cmap="Blues")
    ax.set_xticks(range(mat.shape[1]), confusion["columns"], rotation=30, ha="right")
    ax.set_yticks(range(mat.shape[0]), confusion["rows"])
    ax.set(xlabel="predicted phase", ylabel="ground-truth phase")
    acc = confusion.get("accuracy")
    ax.set_title(f"phase confusion (mask IoU ≥ {confusion.get('iou_thresh', 0.5)}; accuracy {acc:.3f})")
    top = mat.max() if mat.size else 0
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    fig.tight_layout()
    return save_figure(fig, out_png, dpi=100)
