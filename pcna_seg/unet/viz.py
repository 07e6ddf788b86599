"""Pictures of U-Net training: error overlays, overlay video, metric plots, PR curves, LR curves.

Overlay colours (every mode; class 1 = DAPI / nucleus, class 2 = Cy5 / contour):

- green: true positive (prediction = truth ≠ background);
- saturated class colour — blue for class 1 (DAPI), red for class 2 (Cy5) — : a *missed*
  pixel (false negative), drawn in the colour of the **true** class it should have been;
- pale tint of the class colour (light blue / pink): a *false alarm* (false positive on
  background truth), drawn in the colour of the **predicted** class.

The base image is the grey maximum over input channels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pcna_seg.utils_io import atomic_path  # noqa: E402

logger = logging.getLogger(__name__)

TP_COLOUR = (0, 200, 0)
CLASS_COLOURS = [(0, 0, 0), (30, 110, 255), (255, 30, 30), (220, 0, 220), (255, 170, 0)]
_ALPHA = 0.6


def _grey_base(image: np.ndarray) -> np.ndarray:
    """(C, H, W) float ~[0, 1] → (H, W, 3) float in [0, 1] (max over channels)."""
    g = np.clip(np.asarray(image, np.float32).max(axis=0), 0, 1)
    return np.repeat(g[..., None], 3, axis=2)


def error_overlay(image: np.ndarray, target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """One tile's TP / FN / FP overlay (colours in the module doc) as (H, W, 3) uint8 RGB.

    ``image``: (C, H, W) float ~[0, 1]; ``target``, ``pred``: (H, W) int class maps.
    """
    out = _grey_base(image)
    colour = np.zeros_like(out)
    painted = np.zeros(target.shape, bool)
    tp = (pred == target) & (target > 0)
    colour[tp] = np.array(TP_COLOUR) / 255
    painted |= tp
    for c in range(1, int(max(target.max(), pred.max())) + 1):
        base = np.array(CLASS_COLOURS[c % len(CLASS_COLOURS)], np.float32) / 255
        fn = (target == c) & (pred != c)
        fp = (pred == c) & (target == 0)
        colour[fn] = base
        colour[fp] = 0.5 * base + 0.5
        painted |= fn | fp
    out[painted] = (1 - _ALPHA) * out[painted] + _ALPHA * colour[painted]
    return (out * 255).round().astype(np.uint8)


def tile_grid(
    tiles: Sequence[np.ndarray], caption: str = "", columns: int = 4, gap: int = 4, min_side: int = 128
) -> np.ndarray:
    """Arrange (H, W, 3) uint8 tiles in a grid with a caption strip on top → (H', W', 3) uint8.

    Tiles smaller than ``min_side`` are enlarged by an integer factor (nearest neighbour).
    """
    h0 = tiles[0].shape[0]
    if h0 < min_side:  # small tiles: enlarge by an integer factor (nearest) so errors stay visible
        f = -(-min_side // h0)
        tiles = [cv2.resize(t, None, fx=f, fy=f, interpolation=cv2.INTER_NEAREST) for t in tiles]
    n = len(tiles)
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    h, w = tiles[0].shape[:2]
    strip = 24 if caption else 0
    grid = np.full((strip + rows * (h + gap) + gap, cols * (w + gap) + gap, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = strip + gap + r * (h + gap), gap + c * (w + gap)
        grid[y : y + h, x : x + w] = t
    if caption:
        cv2.putText(grid, caption, (gap, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return grid


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 RGB array as PNG atomically."""
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
    return Path(path)


def write_video(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = 4) -> Path:
    """Write RGB uint8 frames as MP4 (imageio-ffmpeg, H.264); fall back to GIF if that fails.

    Frames are padded (white) to a common size divisible by 16. Returns the written path
    (``.gif`` instead of ``.mp4`` after a fallback).
    """
    import imageio.v2 as imageio

    if not frames:
        raise ValueError("no frames for the video")
    h = max(f.shape[0] for f in frames)
    w = max(f.shape[1] for f in frames)
    h16, w16 = -(-h // 16) * 16, -(-w // 16) * 16
    padded = []
    for f in frames:
        p = np.full((h16, w16, 3), 255, np.uint8)
        p[: f.shape[0], : f.shape[1]] = f
        padded.append(p)
    path = Path(path)
    try:
        with atomic_path(path.with_suffix(".mp4")) as tmp:
            with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8,
                                    macro_block_size=16, pixelformat="yuv420p") as wr:  # fmt: skip
                for p in padded:
                    wr.append_data(p)
        return path.with_suffix(".mp4")
    except Exception as exc:  # ffmpeg missing or failing: GIF needs nothing external
        logger.warning("MP4 writing failed (%s); writing a GIF instead", exc)
    gif = path.with_suffix(".gif")
    with atomic_path(gif) as tmp:
        imageio.mimsave(tmp, padded, format="GIF", duration=1000.0 / fps, loop=0)
    return gif


def _save(fig: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_history(
    history: Sequence[dict[str, Any]], out_dir: str | os.PathLike, classes: Sequence[str]
) -> list[Path]:
    """loss.png (train/val loss), lr.png, pr_auc.png (per-class val PR-AUC) from metrics records."""
    out_dir = Path(out_dir)
    ep = [r["epoch"] for r in history]
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ep, [r["train_loss"] for r in history], "o-", label="train")
    ax.plot(ep, [r["val_loss"] for r in history], "s-", label="validation")
    ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax.legend()
    paths.append(_save(fig, out_dir / "loss.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ep, [r["lr"] for r in history], "o-")
    ax.set(xlabel="epoch", ylabel="learning rate", title="Learning rate", yscale="log")
    paths.append(_save(fig, out_dir / "lr.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in classes[1:]:
        ax.plot(ep, [r.get(f"pr_auc/{c}", np.nan) for r in history], "o-", label=c)
    ax.set(xlabel="epoch", ylabel="PR-AUC", title="Validation PR-AUC per class", ylim=(0, 1.02))
    ax.legend()
    paths.append(_save(fig, out_dir / "pr_auc.png"))
    return paths


def plot_pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike,
                   aucs: dict[str, float] | None = None) -> Path:  # fmt: skip
    """Precision–recall curves, one line per class: ``curves[name] = (precision, recall)``."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (p, r) in curves.items():
        label = f"{name} (AUC {aucs[name]:.3f})" if aucs and name in aucs else name
        ax.plot(np.nan_to_num(r, nan=0.0), np.nan_to_num(p, nan=1.0), label=label)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.01), title="Precision-recall")
    ax.legend(loc="lower left")
    return _save(fig, path)


def plot_lr_curves(
    curves: dict[str, Sequence[float]],
    metric: Sequence[float],
    path: str | os.PathLike,
    metric_name: str = "val_loss",
) -> Path:
    """LR vs epoch for several schedulers (top) and the metric they were fed (bottom)."""
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for name, lrs in curves.items():
        a1.plot(range(len(lrs)), lrs, ".-", label=name)
    a1.set(ylabel="learning rate", yscale="log", title=f"LR schedules fed the same {metric_name} sequence")
    a1.legend()
    a2.plot(range(len(metric)), metric, "k.-")
    a2.set(xlabel="epoch", ylabel=metric_name)
    return _save(fig, path)


def frame_overlay(image: np.ndarray, labels: np.ndarray, max_side: int = 2048) -> np.ndarray:
    """Whole-frame prediction picture: class colours over the grey image, (H', W', 3) uint8.

    ``image`` (C, H, W) float ~[0, 1]; ``labels`` (H, W) class map. Frames larger than
    ``max_side`` are shrunk (nearest neighbour for labels) to keep the PNG small.
    """
    out = _grey_base(image)
    for c in range(1, int(labels.max()) + 1):
        m = labels == c
        col = np.array(CLASS_COLOURS[c % len(CLASS_COLOURS)], np.float32) / 255
        out[m] = 0.5 * out[m] + 0.5 * col
    rgb = (out * 255).round().astype(np.uint8)
    scale = max_side / max(rgb.shape[:2])
    if scale < 1:
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return rgb
