"""Pixel scale: how many model pixels one image pixel becomes, in training and at test time.

Microscopy has a pixel size; photographs do not. A nucleus should be the same number of pixels
for the model whatever the field size, so the default is a **fixed** factor (``INPUT.SCALE``):

- ``fixed``: every image, train and test, whole image or tile, is scaled by ``FACTOR``
  (1.0 = native pixels). Crops are taken after scaling, at model scale;
- ``object_size``: the factor is ``DIAMETER / d``, where ``d`` is the median nucleus diameter of
  the image in its own pixels: in training measured from the image's masks (so data sets that
  mix magnifications, like DSB2018, are brought to one nucleus size); at test time given by the
  user (``INPUT.SCALE.TEST_DIAMETER`` / ``--diameter``, as Cellpose users know it) or, when 0,
  estimated from the lowered-Otsu mask (:func:`estimate_diameter`);
- ``short_edge``: detectron2's behaviour (``INPUT.MIN_SIZE_*`` / ``MAX_SIZE_*``): each image
  is resized so its short edge hits the size, which changes the nucleus size with the field
  size. Kept so that the seed report's stage configs mean what they said.

``TRAIN_JITTER`` (lo, hi) multiplies the training factor by a number drawn uniformly in
[lo, hi] (scale augmentation around the policy); (1, 1) = none.

A "diameter" is the equivalent-circle diameter 2·sqrt(area / π) of a mask, in pixels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pcna_seg.data import transforms as T
from pcna_seg.errors import ConfigError, DataError

logger = logging.getLogger(__name__)
MODES = ("fixed", "object_size", "short_edge")
#: INPUT keys that only mean something in short_edge mode
SHORT_EDGE_KEYS = (
    "MIN_SIZE_TRAIN",
    "MIN_SIZE_TRAIN_SAMPLING",
    "MAX_SIZE_TRAIN",
    "MIN_SIZE_TEST",
    "MAX_SIZE_TEST",
)


def equivalent_diameter(area: float | np.ndarray) -> float | np.ndarray:
    """2·sqrt(area / π): the diameter of the circle of the same area (pixels)."""
    return 2.0 * np.sqrt(np.asarray(area, dtype=np.float64) / np.pi)


def record_areas(record: dict[str, Any]) -> np.ndarray:
    """Pixel areas of a record's (non-crowd) instance masks, float64 (N,)."""
    from pcna_seg.data.structures import annotation_area

    anns = [a for a in record.get("annotations") or [] if not a.get("iscrowd", 0)]
    h, w = int(record.get("height", 0)), int(record.get("width", 0))
    return np.asarray([annotation_area(a, h, w) for a in anns], dtype=np.float64)


def median_diameter(areas: Iterable[float]) -> float:
    """Median equivalent diameter of positive ``areas``; 0.0 when there are none."""
    arr = np.asarray([a for a in areas if a > 0], dtype=np.float64)
    return float(np.median(equivalent_diameter(arr))) if arr.size else 0.0


def dataset_diameter(records: Sequence[dict[str, Any]]) -> float:
    """Median nucleus diameter over every instance of ``records`` (native pixels; 0 if none)."""
    return median_diameter(np.concatenate([record_areas(r) for r in records] or [np.zeros(0)]))


def estimate_diameter(foreground: np.ndarray, min_area: int = 9) -> float:
    """Nucleus diameter (pixels) estimated from a binary foreground mask (e.g. lowered Otsu).

    Touching nuclei merge into one component, so the component area would overestimate their
    size; the largest inscribed disc of a component (twice the maximum of its distance
    transform) is one nucleus wide however many touch. Returns the median over components of
    at least ``min_area`` pixels; 0.0 when no component is found.
    """
    from scipy import ndimage

    fg = np.asarray(foreground) > 0
    labels, n = ndimage.label(fg)
    if n == 0:
        return 0.0
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    dist = ndimage.distance_transform_edt(fg)
    peaks = ndimage.maximum(dist, labels, index=np.arange(1, n + 1))
    keep = areas >= min_area
    if not keep.any():
        return 0.0
    # the EDT of a digital disc of radius r peaks at about r: twice the peak is within ~2% of
    # the disc's equivalent diameter
    return float(np.median(2.0 * np.asarray(peaks)[keep]))


@dataclass(frozen=True)
class ScalePolicy:
    """The ``INPUT.SCALE`` settings (plus ``INPUT.MIN/MAX_SIZE_*`` for ``short_edge``).

    ``train_diameter`` is the training set's median nucleus diameter in native pixels (0 when
    unknown); it travels in the checkpoint so that prediction can warn about a size mismatch.
    """

    mode: str = "fixed"
    factor: float = 1.0
    diameter: float = 0.0  # object_size: target nucleus diameter in model pixels
    test_diameter: float = 0.0  # object_size at test time: given diameter (0 = estimate)
    train_jitter: tuple[float, float] = (1.0, 1.0)
    min_object_px: float = 4.0
    max_pixels: int = 64_000_000
    min_size_train: tuple[int, ...] = (800,)
    min_size_sampling: str = "choice"
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333
    train_diameter: float = 0.0

    @classmethod
    def from_config(cls, cfg: Any, train_diameter: float = 0.0) -> ScalePolicy:
        inp = cfg.INPUT
        sc = inp.SCALE
        return cls(
            mode=str(sc.MODE),
            factor=float(sc.FACTOR),
            diameter=float(sc.DIAMETER),
            test_diameter=float(sc.TEST_DIAMETER),
            train_jitter=tuple(float(v) for v in sc.TRAIN_JITTER),  # type: ignore[arg-type]
            min_object_px=float(sc.MIN_OBJECT_PX),
            max_pixels=int(sc.MAX_PIXELS),
            min_size_train=tuple(int(v) for v in inp.MIN_SIZE_TRAIN),
            min_size_sampling=str(inp.MIN_SIZE_TRAIN_SAMPLING),
            max_size_train=int(inp.MAX_SIZE_TRAIN),
            min_size_test=int(inp.MIN_SIZE_TEST),
            max_size_test=int(inp.MAX_SIZE_TEST),
            train_diameter=float(train_diameter),
        ).check()

    def check(self) -> ScalePolicy:
        """Itself; ConfigError naming the INPUT.SCALE key for values that cannot work."""
        if self.mode not in MODES:
            raise ConfigError(f"INPUT.SCALE.MODE must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.factor > 0:
            raise ConfigError(f"INPUT.SCALE.FACTOR must be > 0, got {self.factor}")
        if self.mode == "object_size" and not self.diameter > 0:
            raise ConfigError("INPUT.SCALE.MODE object_size needs INPUT.SCALE.DIAMETER > 0 (model pixels)")
        if self.test_diameter < 0:
            raise ConfigError(
                f"INPUT.SCALE.TEST_DIAMETER must be >= 0 (0 = estimate), got {self.test_diameter}"
            )
        lo, hi = self.train_jitter if len(self.train_jitter) == 2 else (0.0, -1.0)
        if not 0 < lo <= hi:
            raise ConfigError(
                f"INPUT.SCALE.TRAIN_JITTER must be (lo, hi) with 0 < lo <= hi, got {self.train_jitter}"
            )
        return self

    # ------------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """What a checkpoint stores about the scale its model was trained at."""
        return {
            "mode": self.mode,
            "factor": self.factor,
            "diameter": self.diameter,
            "train_diameter": self.train_diameter,
            "model_diameter": self.model_diameter(),
        }

    def model_diameter(self) -> float:
        """The median nucleus diameter the model saw in training (model pixels; 0 if unknown)."""
        if self.mode == "object_size":
            return self.diameter
        if self.mode == "fixed":
            return self.train_diameter * self.factor
        return 0.0  # short_edge: depends on each image's size

    def check_object_size(self, diameter_native: float, where: str) -> None:
        """DataError/ConfigError when nuclei of ``diameter_native`` px would be < MIN_OBJECT_PX."""
        if diameter_native <= 0 or self.mode == "short_edge":
            return
        seen = diameter_native * (
            self.diameter / diameter_native if self.mode == "object_size" else self.factor
        )
        if seen < self.min_object_px:
            raise ConfigError(
                f"{where}: nuclei of {diameter_native:.1f} px would be {seen:.1f} px across at model scale, "
                f"below INPUT.SCALE.MIN_OBJECT_PX {self.min_object_px:g}; raise INPUT.SCALE.FACTOR "
                "(or DIAMETER)"
            )

    def train_factor(self, h: int, w: int, areas: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        """Output (h, w) of a training image of (h, w) px whose instances have ``areas``."""
        if self.mode == "short_edge":
            return T.sample_resize_shape(
                h, w, self.min_size_train, self.min_size_sampling, self.max_size_train, rng
            )
        f = self.factor
        if self.mode == "object_size":
            d = median_diameter(areas) or self.train_diameter
            f = self.diameter / d if d > 0 else 1.0
        lo, hi = self.train_jitter
        if hi > lo:
            f *= float(rng.uniform(lo, hi))
        return _scaled(h, w, f)

    def test_factor(self, h: int, w: int, diameter: float = 0.0) -> tuple[int, int]:
        """Output (h, w) at test time; ``diameter`` (native px, object_size) 0 = use the policy's."""
        if self.mode == "short_edge":
            sizes = [self.min_size_test] if self.min_size_test > 0 else []
            return T.sample_resize_shape(h, w, sizes, "choice", self.max_size_test, None)
        if self.mode == "fixed":
            return _scaled(h, w, self.factor)
        d = diameter or self.test_diameter or self.train_diameter
        if not d > 0:
            raise DataError(
                "INPUT.SCALE.MODE object_size needs the nuclei's diameter at test time: pass --diameter "
                "(INPUT.SCALE.TEST_DIAMETER) or use weights that store their training diameter"
            )
        return _scaled(h, w, self.diameter / d)

    def check_pixels(self, h: int, w: int, where: str) -> None:
        """ConfigError when an (h, w) model input exceeds INPUT.SCALE.MAX_PIXELS."""
        if self.max_pixels > 0 and h * w > self.max_pixels:
            raise ConfigError(
                f"{where} is {h}x{w} px at model scale, more than INPUT.SCALE.MAX_PIXELS "
                f"{self.max_pixels}; predict it in tiles (--tile) or lower INPUT.SCALE.FACTOR"
            )


def _scaled(h: int, w: int, f: float) -> tuple[int, int]:
    if math.isclose(f, 1.0):
        return h, w
    return max(int(h * f + 0.5), 1), max(int(w * f + 0.5), 1)


def size_mismatch(estimated: float, expected: float, tolerance: float = 1.5) -> bool:
    """True when two positive diameters differ by more than ``tolerance``× either way."""
    if estimated <= 0 or expected <= 0:
        return False
    ratio = estimated / expected
    return ratio > tolerance or ratio < 1.0 / tolerance
