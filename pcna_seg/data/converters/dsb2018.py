"""Kaggle Data Science Bowl 2018 nuclei → prepared COCO folder (format ``dsb2018``).

On-disk layout (as distributed by Kaggle)::

    stage1_train/<id>/images/<id>.png     8-bit PNG, RGBA / RGB / grey (mostly grey stored as RGBA)
    stage1_train/<id>/masks/<mask>.png    one binary PNG per nucleus (0 / 255)
    stage1_train_labels.csv               ImageId,EncodedPixels (one row per nucleus)
    stage1_solution.csv                   ImageId,EncodedPixels,Height,Width,Usage (stage-1 test)

Annotations come either from the mask PNGs (``annotations="masks"``) or from a run-length CSV
(``annotations="csv"``; see :mod:`pcna_seg.data.rle_csv` for the encoding). Images are
converted to grey (``image_io.to_gray``) and written to ``OUT/images/<id>.png``; ``image_id``
is the DSB hex id. There are no movies, so the split is by image.

Policies:

- a mask PNG with no foreground is skipped with a warning and counted in the card notes;
- overlapping masks (a few DSB images have them) are made disjoint with
  ``structures.resolve_overlaps`` (smallest instance keeps contested pixels), counted in the notes;
- a sample folder with an empty ``masks/`` folder is a blank image; a missing ``masks/`` folder
  is an error (stage-1 test folders carry no masks: use ``annotations="csv"``);
- CSV mode: an image listed with an empty ``EncodedPixels`` (or only Kaggle's ``1 1``
  placeholder) is blank; images the CSV does not list are skipped and counted in the notes.

Each mask is decoded once and RLE-encoded once; areas and boxes come from the RLE. Images are
processed in a process pool (``workers``; default ``min(4, cpu_count)``).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pcna_seg.data.coco_io import CardBuilder
from pcna_seg.data.converters.base import (
    CLASS_NAMES,
    collect,
    dataset_name,
    finish,
    finish_rles,
    image_summary,
    parallel_map,
    prepared_folder,
    read_gray,
)
from pcna_seg.data.image_io import write_image
from pcna_seg.data.rle_csv import RleCsv, crop_to_rle, kaggle_to_coco_rle, read_rle_csv
from pcna_seg.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def _samples_root(src: Path) -> Path:
    if not src.is_dir():
        raise DataError(f"DSB2018 source folder not found: {src}")
    if (src / "stage1_train").is_dir():
        return src / "stage1_train"
    return src


def _default_csv(root: Path) -> Path:
    names = [f"{root.name}_labels.csv", "stage1_train_labels.csv", "stage1_solution.csv"]
    for folder in (root.parent, root):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise DataError(f"No run-length CSV found beside {root}; pass csv_path= (e.g. stage1_train_labels.csv)")


def _convert_one(task: dict[str, Any]) -> dict[str, Any]:
    """Worker: read one DSB sample, write its grey image, return its annotations and stats."""
    sid, sdir = task["id"], Path(task["dir"])
    img_path = sdir / "images" / f"{sid}.png"
    if not img_path.is_file():
        raise DataError(f"Missing image file {img_path}")
    gray = read_gray(img_path)
    h, w = gray.shape
    write_image(task["out_image"], gray)
    n_empty = 0
    rles: list[dict] = []
    if task["encodings"] is None:
        mask_dir = sdir / "masks"
        if not mask_dir.is_dir():
            raise DataError(f"Missing masks folder {mask_dir}; use annotations='csv' for unlabelled folders")
        for mpath in sorted(mask_dir.glob("*.png")):
            buf = np.fromfile(mpath, dtype=np.uint8)
            m = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if buf.size else None
            if m is None:
                raise DataError(f"Cannot read mask {mpath}: not a valid PNG or the file is corrupt")
            if m.shape != (h, w):
                raise DataError(f"Mask {mpath} is {m.shape[0]}x{m.shape[1]} but its image is {h}x{w}")
            if cv2.countNonZero(m) == 0:
                logger.warning("Skipping empty mask %s", mpath)
                n_empty += 1
                continue
            x, y, bw, bh = cv2.boundingRect(m)
            rles.append(crop_to_rle(m[y : y + bh, x : x + bw] > 0, y, x, h, w))
    else:
        size = task.get("csv_size")
        if size is not None and tuple(size) != (h, w):
            raise DataError(
                f"{task['csv']} gives ImageId {sid} size {size[0]}x{size[1]} but {img_path} is {h}x{w}"
            )
        where = f"{task['csv']} ImageId {sid}"
        for enc in task["encodings"]:
            rle = kaggle_to_coco_rle(enc, h, w, where)
            rles.append({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    anns, n_overlap, n_hidden = finish_rles(rles, h, w)
    if n_overlap:
        logger.warning(
            "%d overlapping mask pixels in %s resolved (smallest instance keeps them)", n_overlap, sid
        )
    return {
        "record": {
            "file_name": str(task["out_image"]),
            "height": int(h),
            "width": int(w),
            "image_id": sid,
            "annotations": anns,
        },
        "summary": image_summary(gray),
        "n_empty": n_empty,
        "n_hidden": n_hidden,
        "n_overlap": n_overlap,
    }


def _load_csv(root: Path, csv_path: str | os.PathLike | None, ids: set[str], usage: str | None) -> RleCsv:
    table = read_rle_csv(Path(csv_path) if csv_path else _default_csv(root))
    unknown = sorted(set(table.encodings) - ids)
    if unknown:
        raise DataError(f"{table.path} lists ImageId {unknown[0]} but {root / unknown[0]} does not exist")
    if usage is not None:
        if not table.usage:
            raise DataError(f"{table.path} has no Usage column, so usage={usage!r} cannot be applied")
        keep = {k for k, v in table.usage.items() if v == usage}
        table.encodings = {k: v for k, v in table.encodings.items() if k in keep}
    return table


@prepared_folder
def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    annotations: str = "masks",
    csv_path: str | os.PathLike | None = None,
    usage: str | None = None,
    workers: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert a DSB2018 folder (``stage1_train`` or its parent) into a prepared dataset.

    ``annotations``: ``"masks"`` (per-nucleus PNGs) or ``"csv"`` (run-length CSV at
    ``csv_path``, default ``<folder>_labels.csv`` / ``stage1_train_labels.csv`` /
    ``stage1_solution.csv`` beside the folder). ``usage`` keeps only CSV rows with that
    ``Usage`` value (``"Public"`` / ``"Private"``). Returns the dataset card dict.
    """
    if annotations not in ("masks", "csv"):
        raise ConfigError(f"annotations must be 'masks' or 'csv', got {annotations!r}")
    root = _samples_root(Path(src))
    samples = {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and (d / "images").is_dir()}
    if not samples:
        raise DataError(f"No DSB2018 samples (<id>/images/<id>.png) found in {root}")
    out = Path(out)
    card = CardBuilder(dataset_name(out), CLASS_NAMES, "dsb2018")
    tasks = []
    table = None
    if annotations == "csv":
        table = _load_csv(root, csv_path, set(samples), usage)
        skipped = len(samples) - len(table.encodings)
        if skipped:
            why = "no rows" if usage is None else f"no rows with Usage {usage}"
            logger.warning("%d image folders have %s in %s and are skipped", skipped, why, table.path)
            card.note(f"{skipped} image folders with {why} in {table.path.name} were skipped")
        if table.placeholders & set(table.encodings):
            card.note(f"{len(table.placeholders)} images had only the '1 1' placeholder and count as blank")
        if table.usage:
            used = Counter(table.usage.values())
            card.note(
                f"Usage in {table.path.name}: " + ", ".join(f"{k} {v}" for k, v in sorted(used.items()))
            )
    for sid, sdir in samples.items():
        if table is not None and sid not in table.encodings:
            continue
        tasks.append(
            {
                "id": sid,
                "dir": str(sdir),
                "out_image": str(out / "images" / f"{sid}.png"),
                "encodings": None if table is None else table.encodings[sid],
                "csv": None if table is None else str(table.path),
                "csv_size": None if table is None else table.sizes.get(sid),
            }
        )
    results = parallel_map(_convert_one, tasks, workers, progress, desc="dsb2018")
    records = collect(results, card)
    return finish(out, records, CLASS_NAMES, card, val_fraction, seed)
