"""Cell counting from a one-logit U-Net: sigmoid → threshold → connected components.

``scipy.ndimage.label`` numbers the objects 1..n and returns n, the number of objects; the
background is not a component, so nothing is subtracted (or added) — a frame with k separate
blobs counts k and an empty frame counts 0.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from pcna_seg.utils_io import atomic_path

_STRUCTURES = {4: ndimage.generate_binary_structure(2, 1), 8: ndimage.generate_binary_structure(2, 2)}


def count_objects(mask: np.ndarray, min_size: int = 0, connectivity: int = 8) -> int:
    """Number of connected foreground objects in a (H, W) boolean mask.

    Objects with fewer than ``min_size`` pixels are ignored; ``connectivity`` is 4 or 8.
    """
    if connectivity not in _STRUCTURES:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=_STRUCTURES[connectivity])
    if min_size <= 1 or n == 0:
        return int(n)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return int(np.count_nonzero(sizes >= min_size))


def counts_from_logits(
    logits: torch.Tensor, threshold: float = 0.5, min_size: int = 0, connectivity: int = 8
) -> list[int]:
    """(N, 1, H, W) logits → N object counts (sigmoid ≥ ``threshold`` → components)."""
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(f"expected (N, 1, H, W) logits, got {tuple(logits.shape)}")
    masks = (torch.sigmoid(logits.float()) >= threshold)[:, 0].cpu().numpy()
    return [count_objects(m, min_size, connectivity) for m in masks]


def counts_from_masks(masks: np.ndarray, threshold: float = 0.5, min_size: int = 0) -> list[int]:
    """Ground-truth counts from (N, H, W) soft or binary masks (value ≥ ``threshold`` = cell)."""
    return [count_objects(np.asarray(m) >= threshold, min_size) for m in masks]


def write_counts_csv(path: str | os.PathLike, names: Sequence[str], counts: Sequence[int]) -> Path:
    """Write ``index,name,count`` rows atomically (the counting report's submission layout + name)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "name", "count"])
            for i, (n, c) in enumerate(zip(names, counts)):
                w.writerow([i, n, int(c)])
    return Path(path)
