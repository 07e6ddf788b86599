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

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from pcna_seg.data.coco_io import CardBuilder, write_prepared_dataset
from pcna_seg.data.image_io import check_pixels, read_image, to_gray, write_image
from pcna_seg.data.rle_csv import RleCsv, crop_to_rle, kaggle_to_coco_rle, read_rle_csv, rle_to_crop
from pcna_seg.errors import ConfigError, DataError

logger = logging.getLogger(__name__)
CLASS_NAMES = ["nucleus"]
Record = dict[str, Any]


def default_workers() -> int:
    """Worker processes used when ``workers`` is None: ``min(4, os.cpu_count())``."""
    return max(1, min(4, os.cpu_count() or 1))


def parallel_map(
    fn: Callable[[Any], Any],
    tasks: list[Any],
    workers: int | None = None,
    progress: bool = True,
    desc: str = "",
) -> list[Any]:
    """``[fn(t) for t in tasks]`` in a process pool (order kept), with a tqdm bar.

    Runs in-process when ``workers <= 1`` or there are fewer than 4 tasks. The first
    exception raised by ``fn`` (e.g. a DataError) cancels the remaining tasks and propagates.
    """
    workers = default_workers() if workers is None else int(workers)
    bar = tqdm(total=len(tasks), desc=desc, disable=not progress, unit="img")
    try:
        if workers <= 1 or len(tasks) < 4:
            out = []
            for t in tasks:
                out.append(fn(t))
                bar.update()
            return out
        pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)))
        try:
            chunk = max(1, min(16, len(tasks) // (workers * 8)))
            out = []
            for res in pool.map(fn, tasks, chunksize=chunk):
                out.append(res)
                bar.update()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return out
    finally:
        bar.close()


def rle_areas(rles: list[dict]) -> np.ndarray:
    """Pixel areas of compressed RLEs as int64, shape (N,).

    Called in chunks: pycocotools 2.0.11's batched ``area`` overflows beyond 255 RLEs.
    """
    parts = [mask_utils.area(rles[i : i + 200]) for i in range(0, len(rles), 200)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def resolve_rle_overlaps(rles: list[dict], height: int, width: int) -> tuple[list[dict | None], int]:
    """Make compressed RLEs (bytes ``counts``) disjoint: contested pixels go to the smallest.

    Same rule and tie order as ``structures.resolve_overlaps`` (paint largest first, stable
    sort, later paint wins) but on bounding-box crops, never stacking full masks. Overlaps are
    detected without decoding (area of the union vs. sum of areas). Returns (RLEs, None for
    instances left empty, number of contested pixels).
    """
    if len(rles) < 2:
        return list(rles), 0
    areas = rle_areas(rles)
    if int(mask_utils.area(mask_utils.merge(rles, intersect=False))) == int(areas.sum()):
        return list(rles), 0
    crops = [rle_to_crop(r) for r in rles]
    labels = np.zeros((height, width), dtype=np.int32)
    cover = np.zeros((height, width), dtype=np.uint16)
    for i in np.argsort(-areas, kind="stable").tolist():
        sl, crop = crops[i]
        labels[sl][crop] = i + 1
        cover[sl][crop] += 1
    out: list[dict | None] = []
    for i, (sl, crop) in enumerate(crops):
        kept = crop & (labels[sl] == i + 1)
        if not kept.any():
            out.append(None)
        elif np.array_equal(kept, crop):
            out.append(rles[i])
        else:
            out.append(crop_to_rle(kept, sl[0].start, sl[1].start, height, width))
    return out, int((cover > 1).sum())


def finish_rles(
    rles: list[dict], height: int, width: int, category_ids: list[int] | None = None
) -> tuple[list[dict], int, int]:
    """Resolve overlaps of compressed RLEs (``counts`` bytes) and build record annotations.

    Returns (annotations with str ``counts`` and mask-derived boxes, contested pixels,
    instances dropped because smaller ones covered them entirely).
    """
    resolved, n_overlap = resolve_rle_overlaps(rles, height, width)
    cats = category_ids if category_ids is not None else [0] * len(rles)
    kept = [(r, c) for r, c in zip(resolved, cats) if r is not None]
    anns = []
    if kept:
        boxes = mask_utils.toBbox([r for r, _ in kept])
        areas = rle_areas([r for r, _ in kept])
        for (rle, cat), box, area in zip(kept, boxes, areas):
            anns.append(
                {
                    "bbox": [float(v) for v in box],
                    "bbox_mode": "XYWH_ABS",
                    "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                    "area": float(area),
                    "category_id": int(cat),
                    "iscrowd": 0,
                }
            )
    return anns, n_overlap, len(rles) - len(kept)


def image_summary(arr: np.ndarray) -> np.ndarray:
    """A 2-element array with the image's dtype, min and max (what CardBuilder needs)."""
    return np.array([arr.min(), arr.max()], dtype=arr.dtype)


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
    arr = read_image(img_path)
    check_pixels(arr, img_path)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise DataError(f"Cannot read image {img_path}: got an array of shape {arr.shape}")
    gray = to_gray(arr)
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
    card = CardBuilder(out.name, CLASS_NAMES, "dsb2018")
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
    write_prepared_dataset(out, records, CLASS_NAMES, card, val_fraction=val_fraction, seed=seed)
    return json.loads((out / "dataset_card.json").read_text(encoding="utf-8"))


def collect(results: Iterable[dict[str, Any]], card: CardBuilder) -> list[Record]:
    """Records from worker results; adds each to ``card`` and notes empty masks / overlaps."""
    records = []
    n_empty = n_overlap = n_overlap_images = n_hidden = 0
    for res in results:
        records.append(res["record"])
        card.add(res["record"], res["summary"])
        n_empty += res.get("n_empty", 0)
        n_overlap += res.get("n_overlap", 0)
        n_hidden += res.get("n_hidden", 0)
        n_overlap_images += bool(res.get("n_overlap", 0))
    if n_empty:
        card.note(f"{n_empty} empty instance masks were skipped")
    if n_overlap:
        card.note(
            f"{n_overlap} overlapping pixels in {n_overlap_images} images resolved "
            "(smallest instance keeps contested pixels)"
        )
    if n_hidden:
        card.note(f"{n_hidden} instances were entirely covered by smaller overlapping ones and dropped")
    return records
