"""Synthetic Kaggle DSB2018 folder: ``stage1_train/<id>/{images,masks}`` + run-length CSVs.

Layout written under ``out``::

    stage1_train/<id>/images/<id>.png   8-bit PNG; image i is RGBA grey-as-colour (i % 3 == 0),
                                        RGB colour-tinted (i % 3 == 1) or grey (i % 3 == 2)
    stage1_train/<id>/masks/<mid>.png   one 0/255 grey PNG per nucleus
    stage1_train_labels.csv             ImageId,EncodedPixels — the same nuclei as the PNGs
    stage1_solution.csv                 (``solution_csv=True``) + Height,Width,Usage columns

``style="realistic"`` (or a :class:`~pcna_seg.data.synthetic.realism.Realism`) draws every
image from the acquisition simulator instead: grey images are min–max stretched to 8 bits
(a few saturated bodies set the white, so most nuclei are dim) and stored RGBA (or grey, one
in five); a ``colour_fraction`` share are colour H&E-/brightfield-like RGB images (dark
nuclei on a light background). The masks are the same exact rasterised nuclei either way.

Ids are random 64-digit hex strings like Kaggle's. The last image is blank: its ``masks/``
folder exists but is empty and the CSVs give it one row with an empty ``EncodedPixels``
(Kaggle's stage-1 training set itself has no blank images; empty ``EncodedPixels`` is how
its later submission/solution files mark an image without nuclei).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from pcna_seg.data.converters.base import parallel_map
from pcna_seg.data.image_io import write_image
from pcna_seg.data.intensity import percentiles as percentiles_of
from pcna_seg.data.intensity import to_uint8 as scale_to_uint8
from pcna_seg.data.rle_csv import mask_to_kaggle, write_rle_csv
from pcna_seg.data.synthetic.base import GroundTruth, GroundTruthImage
from pcna_seg.data.synthetic.nuclei import make_nuclei_image
from pcna_seg.data.synthetic.realism import Realism, colourize, draw_style, resolve, stretch_uint8

SizeSpec = int | tuple[int, int]


def to_uint8(img: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.9)) -> np.ndarray:
    """(H, W) uint16 → uint8 by a percentile stretch (default 0.5–99.9; (0, 100) = min–max)."""
    lo, hi = percentiles_of(img, percentiles)
    return scale_to_uint8(img, lo, hi)


def _pick(rng: np.random.Generator, size: SizeSpec) -> int:
    if isinstance(size, int):
        return size
    return int(rng.integers(size[0], size[1] + 1))


def _colour(gray: np.ndarray, mode: int) -> np.ndarray:
    if mode == 0:  # grey stored as RGBA (most DSB fluorescence images)
        return np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    if mode == 1:  # a tinted RGB image (DSB also has stained brightfield/histology images)
        inv = 255 - gray
        return np.dstack([inv, (inv * 0.6).astype(np.uint8), np.full_like(gray, 200)])
    return gray


def write_sample(
    task: dict[str, Any],
) -> tuple[str, tuple[int, int], np.ndarray | None, list[tuple[str, str]]]:
    """Write one sample folder; returns (image id, (H, W), labels or None, CSV rows)."""
    rng = np.random.default_rng(task["seed"])
    h, w = _pick(rng, task["height"]), _pick(rng, task["width"])
    realism: Realism | None = task.get("realism")
    if realism is None:
        frame = make_nuclei_image(rng, h, w, n_nuclei=task["n_nuclei"], blank=task["blank"])
        sid = rng.bytes(32).hex()
        image = _colour(to_uint8(frame.channels["gray"]), task["index"] % 3)
    else:
        style = draw_style(rng, realism)
        frame = make_nuclei_image(rng, h, w, n_nuclei=task["n_nuclei"], blank=task["blank"], realism=style)
        sid = rng.bytes(32).hex()
        if rng.random() < realism.colour_fraction:
            image = colourize(rng, frame, style)
        else:
            image = _colour(stretch_uint8(frame.channels["gray"]), 0 if rng.random() < 0.8 else 2)
    sdir = Path(task["root"]) / sid
    (sdir / "masks").mkdir(parents=True, exist_ok=True)
    write_image(sdir / "images" / f"{sid}.png", image)
    labels = frame.labels
    rows: list[tuple[str, str]] = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        m = np.zeros(labels.shape, dtype=np.uint8)
        m[sl] = (labels[sl] == k) * np.uint8(255)
        mpath = sdir / "masks" / f"{rng.bytes(32).hex()}.png"
        if not cv2.imwrite(str(mpath), m):
            raise OSError(f"cannot write {mpath}")
        rows.append((sid, mask_to_kaggle(m > 0)))
    if not rows:
        rows.append((sid, ""))
    return sid, (h, w), (labels if task["keep_labels"] else None), rows


def write(
    out: str | os.PathLike,
    *,
    seed: int = 0,
    n_images: int = 5,
    height: SizeSpec = (96, 160),
    width: SizeSpec = (96, 160),
    n_nuclei: int = 12,
    solution_csv: bool = False,
    workers: int = 1,
    keep_labels: bool = True,
    progress: bool = False,
    style: str | Realism = "clean",
) -> GroundTruth:
    """Write a DSB2018-layout folder under ``out`` and return its exact ground truth.

    ``style``: "clean" (default, the unit tests' look), "realistic" or a ``Realism``.

    ``height``/``width``: an int or an inclusive (min, max) range drawn per image. The last
    image is blank when ``n_images >= 2``. ``keep_labels=False`` returns ground truth whose
    ``labels`` are 0×0 placeholders (for large benchmark sets). Each image gets its own
    seed, so the output does not depend on ``workers``. GroundTruth keys are the hex ids.
    """
    out = Path(out)
    root = out / "stage1_train"
    root.mkdir(parents=True, exist_ok=True)
    realism = resolve(style)
    seeds = np.random.SeedSequence(seed).spawn(n_images)
    tasks = [
        {
            "seed": s,
            "index": i,
            "root": str(root),
            "height": height,
            "width": width,
            "n_nuclei": n_nuclei,
            "blank": n_images >= 2 and i == n_images - 1,
            "keep_labels": keep_labels,
            "realism": realism,
        }
        for i, s in enumerate(seeds)
    ]
    results = parallel_map(write_sample, tasks, workers, progress, desc="write dsb2018")
    gt = GroundTruth(format="dsb2018", class_names=["nucleus"])
    rows: list[tuple[str, str]] = []
    sizes: dict[str, tuple[int, int]] = {}
    for sid, shape, labels, img_rows in results:
        rows += img_rows
        sizes[sid] = shape
        lab = labels if labels is not None else np.zeros((0, 0), dtype=np.int32)
        classes = dict.fromkeys(range(1, int(lab.max(initial=0)) + 1), "nucleus")
        gt.images.append(GroundTruthImage(key=sid, labels=lab.astype(np.int32), classes=classes))
    write_rle_csv(out / "stage1_train_labels.csv", rows)
    if solution_csv:
        usage = {g.key: ("Public" if i % 2 == 0 else "Private") for i, g in enumerate(gt.images)}
        write_rle_csv(out / "stage1_solution.csv", rows, sizes=sizes, usage=usage)
    return gt
