"""Label images → per-pixel class targets for the U-Net branch.

Three target modes share one convention: a (H, W) uint8 class-index image.

- ``livedead``: 0 background, 1 DAPI-only (live, HOECHST⁺ Draq7⁻), 2 Cy5 (dead, Draq7⁺);
- ``contour``: 0 background, 1 nucleus interior, 2 contour (a band of ``boundary_width``
  pixels along the inside of every instance outline, so touching nuclei are separated);
- ``count``: 0 background, 1 nucleus (binary foreground; objects are counted afterwards).

The class names recorded in tile files follow :data:`MODE_CLASSES`.
"""

from __future__ import annotations

import os

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.segmentation import find_boundaries

from pcna_seg.errors import ConfigError, DataError

MODE_CLASSES: dict[str, list[str]] = {
    "livedead": ["background", "DAPI", "Cy5"],
    "contour": ["background", "nucleus", "contour"],
    "count": ["background", "nucleus"],
}

# Which label image each mode is built from: a semantic image (0/1/2) or instance labels.
MODE_LABEL_KIND: dict[str, str] = {"livedead": "semantic", "contour": "instances", "count": "instances"}


def check_mode(mode: str) -> None:
    """ConfigError unless ``mode`` is one of :data:`MODE_CLASSES`."""
    if mode not in MODE_CLASSES:
        raise ConfigError(f"UNET.MODE must be one of {sorted(MODE_CLASSES)}, got {mode!r}")


def contour_targets(instances: np.ndarray, boundary_width: int = 2) -> np.ndarray:
    """(H, W) integer instance labels (0 = background) → (H, W) uint8 0 bg / 1 nucleus / 2 contour.

    The contour is the inner outline of each instance (pixels of the instance that touch
    another label or the background) grown ``boundary_width - 1`` pixels inwards; it never
    leaves the instance, so the nucleus area is ``classes 1 + 2``.
    """
    if boundary_width < 1:
        raise ConfigError(f"UNET.TILING.BOUNDARY_WIDTH must be >= 1, got {boundary_width}")
    fg = instances > 0
    edge = find_boundaries(instances, connectivity=1, mode="inner") & fg
    if boundary_width > 1:
        edge = ndimage.binary_dilation(edge, iterations=boundary_width - 1, mask=fg)
    out = fg.astype(np.uint8)
    out[edge] = 2
    return out


def count_targets(labels: np.ndarray) -> np.ndarray:
    """(H, W) instance or semantic labels → (H, W) uint8 binary foreground (0 bg, 1 nucleus)."""
    return (labels > 0).astype(np.uint8)


def livedead_semantic(instances: np.ndarray, dead: np.ndarray | set[int] | list[int]) -> np.ndarray:
    """(H, W) instance labels + which ids are dead → (H, W) uint8 0 bg / 1 live / 2 dead.

    ``dead``: a boolean array indexed by instance id (length > max id) or a collection of ids.
    """
    n = int(instances.max()) + 1 if instances.size else 1
    if isinstance(dead, np.ndarray) and dead.dtype == bool:
        flags = np.zeros(max(n, len(dead)), dtype=bool)
        flags[: len(dead)] = dead
    else:
        flags = np.zeros(n, dtype=bool)
        ids = np.asarray(sorted(int(i) for i in dead), dtype=np.int64)
        flags[ids[(ids > 0) & (ids < n)]] = True
    flags[0] = False
    return np.where(instances > 0, np.where(flags[instances], 2, 1), 0).astype(np.uint8)


def dead_from_intensity(
    instances: np.ndarray, draq7: np.ndarray, threshold: float | None = None
) -> np.ndarray:
    """Boolean (max id + 1,) array: instance is dead when its mean Draq7 (Cy5) signal > threshold.

    ``threshold`` defaults to Otsu's threshold of the per-instance means (two populations).
    """
    n = int(instances.max())
    flags = np.zeros(n + 1, dtype=bool)
    if n == 0:
        return flags
    means = ndimage.mean(draq7.astype(np.float64), labels=instances, index=np.arange(1, n + 1))
    means = np.nan_to_num(np.asarray(means, dtype=np.float64))
    if threshold is None:
        threshold = float(threshold_otsu(means)) if np.ptp(means) > 0 else float(means.max())
    flags[1:] = means > threshold
    return flags


def check_label_values(labels: np.ndarray, mode: str, path: str | os.PathLike) -> None:
    """DataError naming ``path`` when label values do not fit the mode.

    ``livedead`` semantic images hold only 0, 1, 2; instance images hold integers >= 0.
    """
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"Label image {path} has dtype {labels.dtype}; expected integer labels")
    if labels.ndim != 2:
        raise DataError(f"Label image {path} has shape {labels.shape}; expected a single (H, W) plane")
    if MODE_LABEL_KIND[mode] == "semantic":
        n = len(MODE_CLASSES[mode])
        bad = np.unique(labels[(labels < 0) | (labels >= n)])
        if bad.size:
            raise DataError(
                f"Label image {path} holds values {bad[:5].tolist()} outside the classes "
                f"0..{n - 1} {MODE_CLASSES[mode]}"
            )
    elif labels.size and labels.min() < 0:
        raise DataError(f"Instance label image {path} holds negative values")


def make_targets(labels: np.ndarray, mode: str, boundary_width: int = 2) -> np.ndarray:
    """Label image of the mode's kind (:data:`MODE_LABEL_KIND`) → (H, W) uint8 class targets."""
    check_mode(mode)
    if mode == "livedead":
        return labels.astype(np.uint8, copy=False)
    if mode == "contour":
        return contour_targets(labels, boundary_width)
    return count_targets(labels)
