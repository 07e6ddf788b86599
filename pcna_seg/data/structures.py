"""Masks ↔ RLE ↔ polygons, boxes from masks, and label images ↔ instance masks.

Conventions: a mask is a (H, W) bool/uint8 array, True = object. A label image is a (H, W)
integer array, 0 = background, k > 0 = instance k. Boxes are ``[x, y, w, h]`` in absolute
pixels (COCO XYWH_ABS) and always derived from the mask, never from polygon vertices.
RLE is pycocotools' compressed RLE dict ``{"size": [H, W], "counts": str}`` (column-major).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

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


def mask_to_bbox(mask: np.ndarray) -> list[float]:
    """(H, W) bool mask → tight ``[x, y, w, h]`` (pixel-edge convention, w = x_max - x_min + 1)."""
    ys = np.flatnonzero(np.any(mask, axis=1))
    xs = np.flatnonzero(np.any(mask, axis=0))
    if ys.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs[0]), float(ys[0]), float(xs[-1] - xs[0] + 1), float(ys[-1] - ys[0] + 1)]


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


def resolve_overlaps(masks: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Make instance masks disjoint: a pixel claimed by several goes to the smallest instance.

    Rule (documented in the README): smaller objects are usually the ones partly hidden by a
    larger neighbour's outline, so they keep contested pixels. Returns (masks, n_overlapping
    pixels). Masks emptied by the rule are kept (empty) so indices stay aligned.
    """
    if not masks:
        return masks, 0
    stack = np.stack([np.asarray(m, dtype=bool) for m in masks])
    cover = stack.sum(axis=0)
    n_overlap = int((cover > 1).sum())
    if n_overlap == 0:
        return list(stack), 0
    areas = stack.reshape(len(masks), -1).sum(axis=1)
    order = np.argsort(-areas, kind="stable")  # paint large first, small last wins
    labels = np.zeros(stack.shape[1:], dtype=np.int64)
    for i in order:
        labels[stack[i]] = i + 1
    return [labels == i + 1 for i in range(len(masks))], n_overlap


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
