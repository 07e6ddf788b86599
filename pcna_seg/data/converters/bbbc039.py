"""BBBC039 (Broad Bioimage Benchmark Collection, U2OS nuclei) → prepared COCO folder.

On-disk layout::

    images/<name>.tif          16-bit grey fluorescence (DNA stain)
    masks/<name>.png           RGB PNG; the red channel holds graph-coloured labels (0 background,
                               1..K, usually K <= 3): touching nuclei always differ in colour
    metadata/training.txt      optional split lists, one "<name>.png" per line
    metadata/validation.txt
    metadata/test.txt

Instances are the connected components of each colour value, with **8-connectivity** (a
nucleus whose pixels touch only diagonally stays one object; two same-coloured nuclei never
touch, not even diagonally, by construction of the colouring). Nothing is dropped unless
``min_area`` is raised. ``image_id`` is ``<name>``; ``sequence`` is ``<plate>_<well>`` parsed from
names like ``IXMtest_A02_s1_w1…`` so a random split never puts two sites of one well on both
sides. When metadata lists exist they define the split (``train``/``val``/``test``; the test
images go to ``test.json`` and to a ``test`` list in ``split.json``).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pcna_seg.data.coco_io import CardBuilder
from pcna_seg.data.converters.base import (
    CLASS_NAMES,
    collect,
    dataset_name,
    finish,
    image_summary,
    parallel_map,
    prepared_folder,
    read_gray,
    record_from_labels,
)
from pcna_seg.data.image_io import read_image, write_image
from pcna_seg.data.splits import TEST, TRAIN, VAL
from pcna_seg.errors import DataError

logger = logging.getLogger(__name__)
SPLIT_FILES = {TRAIN: "training.txt", VAL: "validation.txt", TEST: "test.txt"}
_WELL = re.compile(r"^(?P<plate>.+?)_(?P<well>[A-Za-z]{1,2}\d{1,2})_s\d+")
EIGHT = np.ones((3, 3), dtype=bool)


def sequence_of(name: str) -> str | None:
    """``<plate>_<well>`` from an ImageXpress-style name (``IXMtest_A02_s1_w1…`` → ``IXMtest_A02``)."""
    m = _WELL.match(name)
    return f"{m['plate']}_{m['well']}" if m else None


def colours_to_labels(colours: np.ndarray, min_area: int = 0) -> tuple[np.ndarray, int]:
    """(H, W) integer colour image → (H, W) int32 instance labels, one per 8-connected component
    of each non-zero colour value. Components smaller than ``min_area`` pixels are dropped;
    returns (labels, number dropped)."""
    labels = np.zeros(colours.shape, dtype=np.int32)
    next_id = 0
    dropped = 0
    for value in np.unique(colours):
        if value == 0:
            continue
        comp, n = ndimage.label(colours == value, structure=EIGHT)
        if min_area > 0 and n:
            keep = np.bincount(comp.ravel(), minlength=n + 1) >= min_area
            keep[0] = False
            dropped += n - int(keep.sum())
            remap = np.zeros(n + 1, dtype=np.int32)
            remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
            comp, n = remap[comp], int(keep.sum())
        fg = comp > 0
        labels[fg] = comp[fg] + next_id
        next_id += n
    return labels, dropped


def _convert_one(task: dict[str, Any]) -> dict[str, Any]:
    img_path, mask_path = Path(task["image"]), Path(task["mask"])
    gray = read_gray(img_path)
    if not mask_path.is_file():
        raise DataError(f"Missing mask file {mask_path} for image {img_path.name}")
    mask = read_image(mask_path)
    colours = mask[..., 0] if mask.ndim == 3 else mask
    if colours.shape != gray.shape:
        raise DataError(
            f"Mask {mask_path} is {colours.shape[0]}x{colours.shape[1]} but {img_path} is "
            f"{gray.shape[0]}x{gray.shape[1]}"
        )
    if not np.issubdtype(colours.dtype, np.integer):
        raise DataError(f"Mask {mask_path} must hold integer labels, got dtype {colours.dtype}")
    labels, dropped = colours_to_labels(colours, task["min_area"])
    write_image(task["out_image"], gray)
    extra = {"sequence": task["sequence"]} if task["sequence"] else {}
    rec = record_from_labels(task["out_image"], task["id"], labels, source=str(mask_path), **extra)
    return {"record": rec, "summary": image_summary(gray), "n_dropped": dropped}


def _read_split(meta: Path, names: set[str]) -> dict[str, list[str]] | None:
    lists = {}
    for key, fname in SPLIT_FILES.items():
        path = meta / fname
        if path.is_file():
            entries = [
                Path(x.strip()).stem for x in path.read_text(encoding="utf-8").splitlines() if x.strip()
            ]
            missing = [e for e in entries if e not in names]
            if missing:
                raise DataError(f"{path} lists {missing[0]} but images/{missing[0]}.tif does not exist")
            lists[key] = entries
    return lists or None


@prepared_folder
def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    use_metadata_split: bool = True,
    min_area: int = 0,
    workers: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert a BBBC039 folder (``images/``, ``masks/``, optional ``metadata/``).

    ``use_metadata_split``: use ``metadata/{training,validation,test}.txt`` when present,
    else split by well (seeded, ``val_fraction``). ``min_area``: drop label components
    smaller than this (0 keeps everything). Returns the dataset card dict.
    """
    src, out = Path(src), Path(out)
    img_dir = src / "images"
    if not img_dir.is_dir():
        raise DataError(f"BBBC039 images folder not found: {img_dir}")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    if not images:
        raise DataError(f"No .tif images found in {img_dir}")
    card = CardBuilder(dataset_name(out), CLASS_NAMES, "bbbc039")
    tasks = [
        {
            "id": p.stem,
            "image": str(p),
            "mask": str(src / "masks" / f"{p.stem}.png"),
            "out_image": str(out / "images" / f"{p.stem}.tif"),
            "sequence": sequence_of(p.stem),
            "min_area": int(min_area),
        }
        for p in images
    ]
    names = {t["id"] for t in tasks}
    extra_masks = [p.name for p in (src / "masks").glob("*.png") if p.stem not in names]
    if extra_masks:
        logger.warning("%d masks without an image are ignored, e.g. %s", len(extra_masks), extra_masks[0])
        card.note(f"{len(extra_masks)} masks without an image were ignored")
    split_lists = _read_split(src / "metadata", names) if use_metadata_split else None
    results = parallel_map(_convert_one, tasks, workers, progress, desc="bbbc039")
    dropped = sum(r["n_dropped"] for r in results)
    if dropped:
        card.note(f"{dropped} label components smaller than {min_area} px were dropped")
    records = collect(results, card)
    if any("sequence" not in r for r in records):  # splits by sequence need it on every record
        for r in records:
            r.pop("sequence", None)
    split = None
    if split_lists is not None:
        split = {k: split_lists.get(k, []) for k in SPLIT_FILES} | {"by": "metadata", "seed": int(seed)}
        listed = set().union(*split_lists.values())
        if len(listed) < len(records):
            card.note(f"{len(records) - len(listed)} images are in no metadata list (in no split)")
        card.note(f"test split: {len(split['test'])} images from metadata/test.txt (test.json)")
        card.note("split taken from metadata/*.txt as given (it may put sites of one well on both sides)")
    return finish(out, records, CLASS_NAMES, card, val_fraction, seed, split)
