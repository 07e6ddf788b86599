"""The one box-from-mask rule (pcna_seg.data.boxes): every form agrees with np.nonzero extents."""

from __future__ import annotations

import numpy as np

from pcna_seg.data.boxes import bbox_slices, boxes_from_masks, mask_crop, mask_to_bbox


def _extents(m: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(m)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_all_forms_agree_with_nonzero_extents():
    rng = np.random.default_rng(0)
    masks = np.zeros((40, 23, 31), dtype=bool)
    for m in masks[:-1]:  # the last one stays empty
        y0, x0 = rng.integers(0, 20), rng.integers(0, 28)
        m[y0 : y0 + rng.integers(1, 6), x0 : x0 + rng.integers(1, 6)] = True
        m &= rng.random(m.shape) < 0.7
        m[y0, x0] = True
    boxes = boxes_from_masks(masks.astype(np.uint8))
    assert boxes.dtype == np.float32 and boxes.shape == (40, 4)
    for m, box in zip(masks[:-1], boxes[:-1]):
        x0, y0, x1, y1 = _extents(m)
        assert box.tolist() == [x0, y0, x1, y1]
        assert mask_to_bbox(m) == [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
        assert bbox_slices(m) == (slice(y0, y1), slice(x0, x1))
        crop, cy, cx = mask_crop(m)
        assert (cy, cx) == (y0, x0) and crop.dtype == bool and np.array_equal(crop, m[y0:y1, x0:x1])
        assert not np.shares_memory(crop, m)
    assert boxes[-1].tolist() == [0, 0, 0, 0]
    assert mask_to_bbox(masks[-1]) == [0.0, 0.0, 0.0, 0.0]
    assert bbox_slices(masks[-1]) == (slice(0, 0), slice(0, 0))
    assert mask_crop(masks[-1]) is None
    assert boxes_from_masks(np.zeros((0, 5, 5), bool)).shape == (0, 4)
