"""Boxes from masks: the one place the tight bounding box of a mask is computed.

Convention (pixel edges): a mask whose True pixels span rows ``r0..r1`` and columns
``c0..c1`` (inclusive) has the box x0 = c0, y0 = r0, x1 = c1 + 1, y1 = r1 + 1, i.e. width
``c1 - c0 + 1``. Every form below (slices, crop, XYWH, XYXY) is derived from
:func:`bbox_slices`, so they cannot disagree. An empty mask has a 0 x 0 box at (0, 0).
"""

from __future__ import annotations

import numpy as np


def bbox_slices(mask: np.ndarray) -> tuple[slice, slice]:
    """(row slice, column slice) of the tight box of a (H, W) bool mask; empty → 0×0 at (0, 0).

    Columns are searched only within the occupied rows, so the cost follows the object's
    height rather than the whole image for a small object.
    """
    ys = np.flatnonzero(np.any(mask, axis=1))
    if ys.size == 0:
        return slice(0, 0), slice(0, 0)
    xs = np.flatnonzero(np.any(mask[ys[0] : ys[-1] + 1], axis=0))
    return slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1)


def mask_crop(mask: np.ndarray) -> tuple[np.ndarray, int, int] | None:
    """(H, W) mask → (bool crop (h, w) of its tight box, a copy; y0; x0), or None when empty."""
    rows, cols = bbox_slices(mask)
    if rows.stop == rows.start:
        return None
    crop = np.array(mask[rows, cols], dtype=bool, copy=True)
    return crop, rows.start, cols.start


def mask_to_bbox(mask: np.ndarray) -> list[float]:
    """(H, W) bool mask → tight ``[x, y, w, h]`` floats (COCO XYWH_ABS); empty → all zeros."""
    rows, cols = bbox_slices(mask)
    return [
        float(cols.start),
        float(rows.start),
        float(cols.stop - cols.start),
        float(rows.stop - rows.start),
    ]


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) masks → (N, 4) float32 XYXY boxes (x1 = last column + 1); empty masks → zeros."""
    boxes = np.zeros((masks.shape[0], 4), dtype=np.float32)
    for i, m in enumerate(masks):
        rows, cols = bbox_slices(m)
        boxes[i] = (cols.start, rows.start, cols.stop, rows.stop)
    return boxes
