"""Synthetic live/dead assay frames laid out as the lab's stitched frames.

Layout (one stitched frame per well and timepoint; ``<k>`` is zero-padded to two digits)::

    <out>/images/<well>_t<k>.tif            (2, H, W) uint16 ImageJ hyperstack, axes "CYX":
                                              channel 0 HOECHST (DAPI filter, all nuclei),
                                              channel 1 Draq7 (Cy5 filter, dead nuclei only)
    <out>/labels/<well>_t<k>_semantic.tif   (H, W) uint8: 0 background, 1 DAPI-only (live), 2 Cy5 (dead)
    <out>/labels/<well>_t<k>_instances.tif  (H, W) int32 instance ids, 0 = background

The real frames are 2700 × 3600 (9 × 9 fields stitched); tests use smaller sizes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile

from pcna_seg.data.image_io import write_image
from pcna_seg.data.synthetic.base import GroundTruth, GroundTruthImage
from pcna_seg.data.synthetic.nuclei import make_livedead_frame
from pcna_seg.errors import ConfigError
from pcna_seg.unet.targets import MODE_CLASSES
from pcna_seg.utils_io import atomic_path

LIVEDEAD_CHANNELS: tuple[str, str] = ("hoechst", "draq7")
LIVEDEAD_CLASSES: list[str] = MODE_CLASSES["livedead"]  # the U-Net targets' class names
MIN_SIZE = 32  # smallest frame side in pixels (nuclei are ~10-20 px across)


def _check(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless ``ok``: the one way a bad argument is reported."""
    if not ok:
        raise ConfigError(message)


def check_args(
    wells: Sequence[str], timepoints: int, height: int, width: int, density: float, dead_fraction: float
) -> None:
    """Validate :func:`write`'s arguments; ConfigError names the argument, its value and the range."""
    _check(isinstance(wells, Sequence) and not isinstance(wells, str) and len(wells) > 0,
           f"wells must be a non-empty list of well names, got {wells!r}")  # fmt: skip
    for w in wells:
        _check(
            isinstance(w, str) and w.strip() == w and w not in ("", ".", "..")
            and not any(c in w for c in '/\\:*?"<>|') and "\x00" not in w,
            f"well name {w!r} cannot be part of a file name "
            "(no '/', '\\', ':', wildcards or surrounding spaces)",
        )  # fmt: skip
    _check(
        len(set(wells)) == len(wells), f"well names repeat in {list(wells)}; each well is one frame series"
    )
    _check(isinstance(timepoints, int) and timepoints >= 1, f"timepoints must be >= 1, got {timepoints!r}")
    for name, v in (("height", height), ("width", width)):
        _check(
            isinstance(v, int) and v >= MIN_SIZE, f"{name} must be an integer >= {MIN_SIZE} pixels, got {v!r}"
        )
    _check(0.0 < float(density) < 0.05, f"density must be in (0, 0.05) nuclei per pixel, got {density!r}")
    _check(0.0 <= float(dead_fraction) <= 1.0, f"dead_fraction must be in [0, 1], got {dead_fraction!r}")


def frame_name(well: str, t: int) -> str:
    """File stem of one stitched frame: ``A1_t03``."""
    return f"{well}_t{t:02d}"


def write(
    out: str | os.PathLike,
    *,
    seed: int = 0,
    wells: Sequence[str] = ("A1", "A2", "B1"),
    timepoints: int = 2,
    height: int = 2700,
    width: int = 3600,
    density: float = 6e-4,
    dead_fraction: float = 0.3,
) -> GroundTruth:
    """Write ``len(wells) × timepoints`` frames under ``out`` (layout above); seeded.

    Returns the ground truth: one image per frame, ``key`` = frame stem, ``labels`` = the
    instance image, ``classes`` = id → "live" / "dead", ``sequence`` = well. Arguments are
    checked first (:func:`check_args`): ConfigError names a bad one.
    """
    check_args(wells, timepoints, height, width, density, dead_fraction)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    gt = GroundTruth(format="livedead", class_names=list(LIVEDEAD_CLASSES))
    for wi, well in enumerate(wells):
        for t in range(timepoints):
            rng = np.random.default_rng([seed, wi, t])
            frame, semantic = make_livedead_frame(rng, height, width, density, dead_fraction)
            name = frame_name(well, t)
            stack = np.stack([frame.channels[c] for c in LIVEDEAD_CHANNELS])
            with atomic_path(out / "images" / f"{name}.tif") as tmp:
                tifffile.imwrite(
                    tmp,
                    stack,
                    imagej=True,
                    metadata={"axes": "CYX", "Labels": ["HOECHST", "Draq7"]},
                )
            write_image(out / "labels" / f"{name}_semantic.tif", semantic)
            write_image(out / "labels" / f"{name}_instances.tif", frame.labels.astype(np.int32))
            gt.images.append(GroundTruthImage(name, frame.labels, dict(frame.phases), sequence=well))
    return gt
