"""Contact sheets: images with instance outlines coloured by class (PNG for people to look at)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pcna_seg.data.image_io import read_image, to_gray
from pcna_seg.data.intensity import display_stretch
from pcna_seg.data.structures import segmentation_to_mask
from pcna_seg.utils_io import atomic_path

Record = dict[str, Any]


def class_colors(class_names: list[str]) -> list[tuple[float, float, float]]:
    """One RGB colour in [0, 1] per class: phase colours for phase names, tab10 otherwise."""
    import matplotlib

    try:
        from pcna_seg.data.phases import phase_colors

        known = phase_colors(class_names)
    except ImportError:  # phases module absent
        known = {}
    tab = matplotlib.colormaps["tab10"]
    out = []
    for i, name in enumerate(class_names):
        if name in known:
            out.append(tuple(c / 255.0 for c in known[name][:3]))
        else:
            out.append(tuple(tab(i % 10)[:3]))
    return out


def display_image(record: Record) -> np.ndarray:
    """(H, W) float image in [0, 1] for display: the PCNA channel if present, else file_name."""
    path = (record.get("channels") or {}).get("pcna", record["file_name"])
    img = to_gray(read_image(path)).astype(np.float32)
    if img.ndim == 3:  # stacked file: first frame
        img = img[0]
    return display_stretch(img)


def outline_overlay(record: Record, class_names: list[str]) -> np.ndarray:
    """(H, W, 3) float RGB: grey image with each instance's outline in its class colour."""
    from scipy import ndimage

    grey = display_image(record)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    colors = class_colors(class_names)
    h, w = grey.shape
    for ann in record.get("annotations", []):
        m = segmentation_to_mask(ann["segmentation"], h, w)
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = colors[int(ann["category_id"])]
    return rgb


def contact_sheet(
    records: list[Record],
    class_names: list[str],
    out_png: str | os.PathLike,
    max_images: int = 12,
    title: str = "",
) -> Path:
    """Write a grid PNG of up to ``max_images`` records with outlines and a class legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    recs = records[:max_images]
    n = max(len(recs), 1)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, rec in zip(axes.ravel(), recs):
        ax.imshow(outline_overlay(rec, class_names))
        ax.set_title(f"{rec['image_id']} ({len(rec.get('annotations', []))})", fontsize=8)
    colors = class_colors(class_names)
    handles = [Patch(color=c, label=name) for c, name in zip(colors, class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out_png
