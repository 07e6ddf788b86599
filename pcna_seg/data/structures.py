"""Masks ↔ RLE ↔ polygons, annotations, and label images ↔ instance masks.

Conventions: a mask is a (H, W) bool/uint8 array, True = object. A label image is a (H, W)
integer array, 0 = background, k > 0 = instance k. Boxes are ``[x, y, w, h]`` in absolute
pixels (COCO XYWH_ABS) and always derived from the mask (:mod:`pcna_seg.data.boxes`), never
from polygon vertices.
RLE is pycocotools' compressed RLE dict ``{"size": [H, W], "counts": str}`` (column-major).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from pcna_seg.data.boxes import bbox_slices, mask_to_bbox
from pcna_seg.errors import DataError

RLE = dict[str, Any]


def mask_to_rle(mask: np.ndarray) -> RLE:
    """(H, W) bool mask → compressed RLE with a JSON-serialisable str ``counts``."""
    arr = np.asfortranarray(np.asarray(mask, dtype=np.uint8))
    rle = mask_utils.encode(arr)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def rle_to_mask(rle: RLE) -> np.ndarray:
    """Compressed or uncompressed RLE dict → (H, W) bool mask."""
    if isinstance(rle.get("counts"), list):
        h, w = rle["size"]
        rle = mask_utils.frPyObjects(rle, h, w)
    elif isinstance(rle.get("counts"), str):
        rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """COCO polygons (list of flat [x0, y0, x1, y1, ...] lists) → (H, W) bool mask."""
    polys = [list(map(float, p)) for p in polygons if len(p) >= 6]
    if not polys:
        return np.zeros((height, width), dtype=bool)
    rles = mask_utils.frPyObjects(polys, height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """(H, W) bool mask → COCO polygons along pixel outlines (lossy for 1-px structures).

    Exact round-trips use RLE; polygons are offered for tools that need vertices.
    """
    arr = np.ascontiguousarray(np.asarray(mask, dtype=np.uint8))
    contours, _ = cv2.findContours(arr, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polys = []
    for c in contours:
        c = c.reshape(-1, 2).astype(float) + 0.5  # pixel centres
        if len(c) >= 3:
            polys.append(c.flatten().tolist())
    return polys


def segmentation_to_mask(segm: Any, height: int, width: int) -> np.ndarray:
    """COCO ``segmentation`` (RLE dict or polygon list) → (H, W) bool mask."""
    if isinstance(segm, dict):
        mask = rle_to_mask(segm)
        if mask.shape != (height, width):
            raise DataError(f"RLE size {mask.shape} does not match image size {(height, width)}")
        return mask
    if isinstance(segm, list):
        return polygons_to_mask(segm, height, width)
    raise DataError(f"Unsupported segmentation type {type(segm).__name__}")


def labels_to_masks(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(H, W) integer label image → (ids, list of (H, W) bool masks), one per non-zero id.

    Uses ``scipy.ndimage.find_objects`` so each mask is built from its bounding slice only.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise DataError(f"Label image must be 2-D, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        else:
            raise DataError(f"Label image must hold integers, got dtype {labels.dtype}")
    if labels.min() < 0:
        raise DataError("Label image holds negative values")
    ids: list[int] = []
    masks: list[np.ndarray] = []
    lab = labels.astype(np.int64, copy=False)
    for idx, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        m = np.zeros(lab.shape, dtype=bool)
        m[sl] = lab[sl] == idx
        ids.append(idx)
        masks.append(m)
    return np.asarray(ids, dtype=np.int64), masks


def masks_to_labels(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """List of (H, W) bool masks → (H, W) int32 label image (later masks win overlaps)."""
    out = np.zeros(shape, dtype=np.int32)
    for i, m in enumerate(masks, start=1):
        out[np.asarray(m, dtype=bool)] = i
    return out


def rle_areas(rles: list[RLE]) -> np.ndarray:
    """Pixel areas of compressed RLEs (bytes ``counts``) as int64, shape (N,).

    Called in chunks: pycocotools' batched ``area`` overflows beyond 255 RLEs with numpy 2.
    """
    parts = [mask_utils.area(rles[i : i + 200]) for i in range(0, len(rles), 200)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def annotation_area(ann: dict[str, Any], height: int, width: int) -> float:
    """Pixel area of one annotation: from its RLE or polygons (pycocotools), without decoding."""
    segm = ann.get("segmentation")
    if isinstance(segm, dict):
        rle = segm
        if isinstance(rle.get("counts"), list):
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        elif isinstance(rle.get("counts"), str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        return float(mask_utils.area(rle))
    if isinstance(segm, list) and segm:
        polys = [list(map(float, p)) for p in segm if len(p) >= 6]
        return (
            float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(polys, height, width))))
            if polys
            else 0.0
        )
    return float(ann.get("area", 0.0))


Crop = tuple[tuple[slice, slice], np.ndarray]


def resolve_crop_overlaps(
    crops: list[Crop], shape: tuple[int, int], areas: np.ndarray | None = None
) -> tuple[list[np.ndarray], int]:
    """The overlap rule on bounding-box crops: contested pixels go to the smallest instance.

    ``crops``: one ((row slice, column slice), (h, w) bool crop) per instance in an image of
    ``shape``; ``areas``: their pixel counts (computed when None). Instances are painted largest
    first (stable sort, so among equal areas the later one wins) into an (H, W) label image.
    Returns (kept part of each crop, same box and shape as its input; number of pixels claimed
    by more than one instance). Memory: two (H, W) images, never one per instance.
    """
    if areas is None:
        areas = np.array([int(np.count_nonzero(c)) for _, c in crops], dtype=np.int64)
    labels = np.zeros(shape, dtype=np.int32)
    cover = np.zeros(shape, dtype=np.uint16)
    for i in np.argsort(-np.asarray(areas), kind="stable").tolist():
        sl, crop = crops[i]
        labels[sl][crop] = i + 1
        cover[sl][crop] += 1
    kept = [crop & (labels[sl] == i + 1) for i, (sl, crop) in enumerate(crops)]
    return kept, int((cover > 1).sum())


def resolve_overlaps(masks: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Make instance masks disjoint: a pixel claimed by several goes to the smallest instance.

    Rule (documented in the README): smaller objects are usually the ones partly hidden by a
    larger neighbour's outline, so they keep contested pixels. Returns (masks, n_overlapping
    pixels). Masks emptied by the rule are kept (empty) so indices stay aligned. Works on
    bounding-box crops (:func:`resolve_crop_overlaps`); masks that lose nothing are returned
    as given (as bool arrays), only the trimmed ones are new arrays.
    """
    if not masks:
        return masks, 0
    arrs = [np.asarray(m, dtype=bool) for m in masks]
    shape = arrs[0].shape
    if any(a.shape != shape for a in arrs):
        raise ValueError(f"resolve_overlaps needs masks of one shape, got {sorted({a.shape for a in arrs})}")
    crops = [(sl, a[sl]) for a, sl in ((a, bbox_slices(a)) for a in arrs)]
    kept, n_overlap = resolve_crop_overlaps(crops, shape)
    out = []
    for a, (sl, crop), k in zip(arrs, crops, kept):
        if np.array_equal(k, crop):
            out.append(a)
        else:
            m = np.zeros(shape, dtype=bool)
            m[sl] = k
            out.append(m)
    return out, n_overlap


def make_annotation(mask: np.ndarray, category_id: int, **extra: Any) -> dict[str, Any]:
    """Build one record annotation from a mask: RLE segmentation, mask-derived box, area."""
    rle = mask_to_rle(mask)
    ann = {
        "bbox": mask_to_bbox(mask),
        "bbox_mode": "XYWH_ABS",
        "segmentation": rle,
        "area": float(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")})),
        "category_id": int(category_id),
        "iscrowd": 0,
    }
    ann.update(extra)
    return ann
