"""Shared pieces of the converters: label image → record, progress, overlap policy."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from pcna_seg.data.structures import labels_to_masks, make_annotation
from pcna_seg.errors import DataError

logger = logging.getLogger(__name__)
Record = dict[str, Any]


def record_from_labels(
    file_name: str,
    image_id: Any,
    labels: np.ndarray,
    class_of: dict[int, int] | None = None,
    source: str = "",
    **extra: Any,
) -> Record:
    """A record from an instance label image (0 = background).

    ``class_of`` maps label id → 0-based category id (default: all 0). ``source`` names the
    file for error messages. Annotations are ordered by label id; boxes come from the masks.
    """
    h, w = labels.shape
    ids, masks = labels_to_masks(labels)
    anns = []
    for idx, m in zip(ids.tolist(), masks):
        cid = 0 if class_of is None else class_of.get(idx)
        if cid is None:
            raise DataError(f"Object {idx} in {source or file_name} has no class assigned")
        anns.append(make_annotation(m, cid))
    rec: Record = {
        "file_name": file_name,
        "height": int(h),
        "width": int(w),
        "image_id": image_id,
        "annotations": anns,
    }
    rec.update(extra)
    return rec
