"""Shared pieces of the converters: label images → annotations, RLE overlap policy, worker
pools with progress, card bookkeeping and the final write of the prepared folder."""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from pcna_seg.data.coco_io import CardBuilder, Record, read_json, write_prepared_dataset
from pcna_seg.data.image_io import check_pixels, read_image, to_gray
from pcna_seg.data.rle_csv import crop_to_rle, rle_to_crop
from pcna_seg.data.structures import labels_to_masks, make_annotation, resolve_crop_overlaps, rle_areas
from pcna_seg.errors import ConfigError, DataError
from pcna_seg.utils_io import output_folder

logger = logging.getLogger(__name__)
#: classes of the single-class nucleus datasets (DSB2018, DeepCell, CTC, BBBC039)
CLASS_NAMES = ["nucleus"]


# --------------------------------------------------------------------------------- label images
def check_labels(arr: np.ndarray, source: str) -> np.ndarray:
    """Validate a (H, W) instance label image and return it as int64; DataError names ``source``.

    Accepts integer dtypes and floats holding whole numbers; rejects NaN/inf, fractional and
    negative values.
    """
    arr = np.asarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise DataError(f"Label image {source} contains NaN or infinite values")
        if not np.all(np.mod(arr, 1) == 0):
            raise DataError(f"Label image {source} holds non-integer values; expected instance ids")
    elif arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"Label image {source} has dtype {arr.dtype}; expected integer instance ids")
    if arr.size and arr.min() < 0:
        raise DataError(f"Label image {source} holds negative values; expected ids >= 0")
    return arr.astype(np.int64, copy=False)


def label_annotations(
    labels: np.ndarray,
    class_of: dict[int, int] | None = None,
    source: str = "",
    track_ids: bool = False,
) -> list[dict[str, Any]]:
    """Annotations for every id of a (H, W) integer label image (0 = background), ordered by id.

    ``class_of`` maps label id → 0-based category id (default: all 0; an id it lacks is a
    DataError naming ``source``). With ``track_ids`` each annotation gets ``track_id`` = its
    label id. Boxes and areas come from the masks.
    """
    ids, masks = labels_to_masks(labels)
    anns = []
    for idx, m in zip(ids.tolist(), masks):
        cid = 0 if class_of is None else class_of.get(idx)
        if cid is None:
            raise DataError(f"Object {idx} in {source} has no class assigned")
        anns.append(make_annotation(m, cid, **({"track_id": int(idx)} if track_ids else {})))
    return anns


def record_from_labels(
    file_name: str,
    image_id: Any,
    labels: np.ndarray,
    class_of: dict[int, int] | None = None,
    source: str = "",
    track_ids: bool = False,
    **extra: Any,
) -> Record:
    """A record from an instance label image (0 = background); see :func:`label_annotations`.

    ``source`` names the file for error messages (default ``file_name``); ``extra`` keys
    (``sequence``, ``frame``, ...) are added to the record.
    """
    h, w = labels.shape
    rec: Record = {
        "file_name": file_name,
        "height": int(h),
        "width": int(w),
        "image_id": image_id,
        "annotations": label_annotations(labels, class_of, source or file_name, track_ids),
    }
    rec.update(extra)
    return rec


# ------------------------------------------------------------------------------------------ pixels
def as_image(arr: np.ndarray, source: str) -> np.ndarray:
    """Check pixels (dtype, NaN) naming ``source``; floats become float32, integers are kept."""
    check_pixels(arr, source)
    return arr.astype(np.float32, copy=False) if np.issubdtype(arr.dtype, np.floating) else arr


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Read an image file, check its pixels and convert it to (H, W) grey (``image_io.to_gray``)."""
    arr = read_image(path)
    check_pixels(arr, path)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise DataError(f"Cannot read image {path}: got an array of shape {arr.shape}")
    return to_gray(arr)


def image_summary(arr: np.ndarray) -> np.ndarray:
    """A 2-element array with the image's dtype, min and max (what CardBuilder needs)."""
    return np.array([arr.min(), arr.max()], dtype=arr.dtype)


# -------------------------------------------------------------------------------------------- RLE
def resolve_rle_overlaps(rles: list[dict], height: int, width: int) -> tuple[list[dict | None], int]:
    """Make compressed RLEs (bytes ``counts``) disjoint: contested pixels go to the smallest.

    The rule of ``structures.resolve_overlaps`` (:func:`~pcna_seg.data.structures.resolve_crop_overlaps`)
    on bounding-box crops. Overlaps are detected without decoding (area of the union vs. sum
    of areas). Returns (RLEs, None for instances left empty; number of contested pixels).
    """
    if len(rles) < 2:
        return list(rles), 0
    areas = rle_areas(rles)
    if int(mask_utils.area(mask_utils.merge(rles, intersect=False))) == int(areas.sum()):
        return list(rles), 0
    crops = [rle_to_crop(r) for r in rles]
    kept, n_overlap = resolve_crop_overlaps(crops, (height, width), areas)
    out: list[dict | None] = []
    for rle, (sl, crop), k in zip(rles, crops, kept):
        if not k.any():
            out.append(None)
        elif np.array_equal(k, crop):
            out.append(rle)
        else:
            out.append(crop_to_rle(k, sl[0].start, sl[1].start, height, width))
    return out, n_overlap


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


# ----------------------------------------------------------------------------------------- workers
def default_workers() -> int:
    """Workers used when ``workers`` is None: ``min(4, os.cpu_count())``."""
    return max(1, min(4, os.cpu_count() or 1))


def parallel_map(
    fn: Callable[[Any], Any],
    tasks: list[Any],
    workers: int | None = None,
    progress: bool = True,
    desc: str = "",
    threads: bool = False,
) -> list[Any]:
    """``[fn(t) for t in tasks]`` in a process pool (``threads``: a thread pool), order kept,
    with a tqdm bar.

    Runs in-process when ``workers <= 1`` or there are fewer than 4 tasks. Threads suit
    closures and I/O-bound work; processes need a picklable module-level ``fn``. The first
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
        n = min(workers, len(tasks))
        pool: Executor = ThreadPoolExecutor(max_workers=n) if threads else ProcessPoolExecutor(max_workers=n)
        try:
            chunk = 1 if threads else max(1, min(16, len(tasks) // (workers * 8)))
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


# -------------------------------------------------------------------------------------------- card
def collect(results: Iterable[dict[str, Any]], card: CardBuilder) -> list[Record]:
    """Records from worker results; adds each to ``card`` and notes empty masks / overlaps.

    A result is ``{"record", "summary"}`` (pixels or :func:`image_summary`) plus optional
    counts ``n_empty`` (empty masks skipped), ``n_overlap`` (contested pixels) and
    ``n_hidden`` (instances covered entirely by smaller ones).
    """
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


def finish(
    out: Path,
    records: list[Record],
    class_names: list[str],
    card: CardBuilder,
    val_fraction: float = 0.2,
    seed: int = 0,
    split: dict[str, list[Any]] | None = None,
) -> dict[str, Any]:
    """Write the prepared folder (``coco_io.write_prepared_dataset``); return the card as written."""
    paths = write_prepared_dataset(out, records, class_names, card, val_fraction, seed, split)
    return read_json(paths["card"])


# ---------------------------------------------------------------------------- the output folder
def dataset_name(out: str | os.PathLike) -> str:
    """The prepared folder's name, also while it is built in its hidden ``--overwrite`` staging
    folder (``.NAME.staging`` → ``NAME``)."""
    name = Path(out).name
    m = re.fullmatch(r"\.(.+)\.staging", name)
    return m.group(1) if m else name


def check_val_fraction(val_fraction: Any) -> float:
    """``val_fraction`` as a float in [0, 1); ConfigError otherwise (checked before any work)."""
    try:
        value = float(val_fraction)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    return value


def check_source_output(src: str | os.PathLike, out: str | os.PathLike, what: str = "source") -> None:
    """ConfigError when the output folder is the source, lies inside it, or holds it."""
    s, o = Path(src).resolve(), Path(out).resolve()
    if s == o:
        raise ConfigError(f"Output folder {out} is the {what} folder; choose another output folder")
    if s in o.parents:
        raise ConfigError(f"Output folder {out} lies inside the {what} {src}; choose a folder outside it")
    if o in s.parents:
        raise ConfigError(
            f"The {what} {src} lies inside the output folder {out}, which --overwrite would replace; "
            "choose another output folder"
        )


def prepared_folder(convert: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Decorator giving a converter ``convert(src, out, **options)`` the output-folder rule.

    The wrapped converter takes ``overwrite=False`` too. Before any work: ``val_fraction``
    must be in [0, 1), the output must not be the source (nor inside it, nor hold it; also
    ``image_root``), and a non-empty output is refused unless ``overwrite``. The converter
    then writes into the folder :func:`~pcna_seg.utils_io.output_folder` yields: the
    output itself when new (removed again if the conversion fails), else a staging folder
    swapped in for the old dataset only when the conversion succeeded.
    """

    @functools.wraps(convert)
    def wrapper(src: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False, **options: Any):
        if "val_fraction" in options:
            options["val_fraction"] = check_val_fraction(options["val_fraction"])
        check_source_output(src, out)
        if options.get("image_root"):
            check_source_output(options["image_root"], out, "image_root")
        with output_folder(out, overwrite=overwrite) as target:
            return convert(src, target, **options)

    return wrapper
