"""Augmentations on numpy arrays: resize, crop, flips, 90° rotations, intensity jitter,
photometric augmentation (gamma, gain, offset, blur, noise) of fluorescence channels.

Arrays: ``image`` is (H, W, C) float32 (recipe order), ``masks`` is (N, H, W) uint8. Every
random choice is drawn from the ``numpy.random.Generator`` passed in, so a seeded generator
reproduces an augmentation exactly.

Resizing and cropping are planned first (:func:`sample_resize_shape`, :func:`sample_crop`)
and applied in one step: the image is resized with bilinear interpolation (cv2) and then
cropped; instance masks are resampled with nearest neighbour through index maps restricted
to the crop window (:func:`nearest_indices`), so a full-size resized mask is never built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pcna_seg.data.boxes import bbox_slices
from pcna_seg.data.channels import channel_role
from pcna_seg.errors import ConfigError, DataError

FLIP_MODES = ("none", "horizontal", "vertical", "both")
CROP_TYPES = ("relative", "relative_range", "absolute")


def sample_resize_shape(
    h: int,
    w: int,
    min_sizes: Sequence[int],
    sampling: str,
    max_size: int,
    rng: np.random.Generator | None,
) -> tuple[int, int]:
    """Shortest-edge resize plan → (new_h, new_w).

    ``sampling="choice"`` picks one of ``min_sizes``; ``"range"`` draws an integer in
    ``[min_sizes[0], min_sizes[1]]``. The longer edge is capped at ``max_size`` (0 = no cap).
    A shortest-edge size of 0 (or an empty list) keeps the size. ``rng=None`` takes the last
    entry (deterministic, test time).
    """
    sizes = [int(s) for s in min_sizes]
    if not sizes:
        return h, w
    if rng is None:
        short = sizes[-1]
    elif sampling == "choice":
        short = sizes[int(rng.integers(len(sizes)))]
    elif sampling == "range":
        if len(sizes) != 2:
            raise ConfigError(
                f"INPUT.MIN_SIZE_TRAIN must hold two values (min, max) for 'range' sampling, got {sizes}"
            )
        short = int(rng.integers(min(sizes), max(sizes) + 1))
    else:
        raise ConfigError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING must be 'choice' or 'range', got {sampling!r}")
    if short <= 0:
        return h, w
    scale = short / min(h, w)
    new_h, new_w = h * scale, w * scale
    if max_size > 0 and max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return max(int(new_h + 0.5), 1), max(int(new_w + 0.5), 1)


def sample_crop(
    h: int,
    w: int,
    crop_type: str,
    size: Sequence[float],
    rng: np.random.Generator,
    file_name: str = "",
) -> tuple[int, int, int, int]:
    """Random crop window (y0, x0, ch, cw) inside an (h, w) image.

    ``crop_type``: ``"relative"`` (fraction ``size`` = [fh, fw]), ``"relative_range"`` (fraction
    drawn uniformly in [size, 1]) or ``"absolute"`` (``size`` = [ch, cw] pixels). An image
    smaller than an absolute crop raises DataError naming the file and INPUT.CROP.SIZE.
    """
    if len(size) != 2:
        raise ConfigError(f"INPUT.CROP.SIZE must hold two values [h, w], got {list(size)}")
    if crop_type == "relative":
        ch, cw = int(h * size[0] + 0.5), int(w * size[1] + 0.5)
    elif crop_type == "relative_range":
        fh = rng.uniform(float(size[0]), 1.0)
        fw = rng.uniform(float(size[1]), 1.0)
        ch, cw = int(h * fh + 0.5), int(w * fw + 0.5)
    elif crop_type == "absolute":
        ch, cw = int(size[0]), int(size[1])
        if ch > h or cw > w:
            raise DataError(
                f"Image {file_name} is {h}x{w} after resizing, smaller than the absolute crop "
                f"INPUT.CROP.SIZE {ch}x{cw}"
            )
    else:
        raise ConfigError(f"INPUT.CROP.TYPE must be one of {', '.join(CROP_TYPES)}, got {crop_type!r}")
    ch, cw = min(max(ch, 1), h), min(max(cw, 1), w)
    y0 = int(rng.integers(h - ch + 1))
    x0 = int(rng.integers(w - cw + 1))
    return y0, x0, ch, cw


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source index of every destination pixel for a nearest-neighbour resize ``src → dst``
    (pixel-centre convention, int64 array of length ``dst``)."""
    idx = np.floor((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst)).astype(np.int64)
    return np.minimum(idx, src - 1)


def resize_image(
    image: np.ndarray, shape: tuple[int, int], binary_channels: Sequence[int] = ()
) -> np.ndarray:
    """(H, W, C) float32 → (h, w, C) float32, bilinear; ``binary_channels`` re-binarised at 0.5."""
    h, w = shape
    if image.shape[:2] == (h, w):
        return image
    chans = image.shape[2]
    parts = []
    for start in range(0, chans, 4):  # cv2 handles up to 4 channels per call safely
        block = np.ascontiguousarray(image[..., start : start + 4])
        out = cv2.resize(block, (w, h), interpolation=cv2.INTER_LINEAR)
        parts.append(out.reshape(h, w, -1))
    out = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
    for c in binary_channels:
        out[..., c] = (out[..., c] >= 0.5).astype(np.float32)
    return out


def resample_mask_into(out: np.ndarray, mask: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
    """Nearest-neighbour resample of an (H, W) bool mask into ``out`` (h, w) uint8, in place.

    ``rows``/``cols`` (length h / w, non-decreasing) give the source pixel of every output
    row/column (:func:`nearest_indices`, already restricted to the crop window). Only the
    mask's bounding box is resampled, so the cost follows the object size, not the image size.
    """
    ys, xs = bbox_slices(mask)
    if ys.stop == ys.start:
        return
    r0, r1 = np.searchsorted(rows, ys.start, "left"), np.searchsorted(rows, ys.stop - 1, "right")
    c0, c1 = np.searchsorted(cols, xs.start, "left"), np.searchsorted(cols, xs.stop - 1, "right")
    if r1 > r0 and c1 > c0:
        out[r0:r1, c0:c1] = mask[np.ix_(rows[r0:r1], cols[c0:c1])]


def sample_flip_rot(rng: np.random.Generator, flip: str, rotate90: bool) -> tuple[bool, bool, int]:
    """Draw (flip_horizontal, flip_vertical, k quarter turns) for one sample."""
    if flip not in FLIP_MODES:
        raise ConfigError(f"INPUT.RANDOM_FLIP must be one of {', '.join(FLIP_MODES)}, got {flip!r}")
    hflip = flip in ("horizontal", "both") and bool(rng.random() < 0.5)
    vflip = flip in ("vertical", "both") and bool(rng.random() < 0.5)
    k = int(rng.integers(4)) if rotate90 else 0
    return hflip, vflip, k


def apply_flip_rot(
    image: np.ndarray, masks: np.ndarray, hflip: bool, vflip: bool, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Apply flips then ``k`` counter-clockwise quarter turns to (H, W, C) image and (N, H, W) masks."""
    if hflip:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
    if vflip:
        image, masks = image[::-1], masks[:, ::-1]
    if k % 4:
        image = np.rot90(image, k, axes=(0, 1))
        masks = np.rot90(masks, k, axes=(1, 2))
    return np.ascontiguousarray(image), np.ascontiguousarray(masks)


def jitter_intensity(
    image: np.ndarray,
    recipe: Sequence[str],
    allowed: Sequence[str],
    brightness: float,
    contrast: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Random contrast/brightness on the channels whose recipe name is in ``allowed``.

    One (contrast c, brightness b) pair is drawn per recipe NAME (so ``["pcna", "pcna", "dic"]``
    jitters both PCNA copies alike): ``x' = clip((x - mean) * c + mean + b, 0, 1)`` with
    ``c ~ U(1 - contrast, 1 + contrast)`` and ``b ~ U(-brightness, brightness)``. DIC and the
    Otsu mask are never touched, whatever ``allowed`` says. Returns a new array.
    """
    out = image.copy()
    draws: dict[str, tuple[float, float]] = {}
    for i, name in enumerate(recipe):
        if name not in allowed or name in ("dic", "otsu_mask"):
            continue
        if name not in draws:
            draws[name] = (
                float(rng.uniform(1.0 - contrast, 1.0 + contrast)),
                float(rng.uniform(-brightness, brightness)),
            )
        c, b = draws[name]
        plane = out[..., i]
        mean = float(plane.mean())
        out[..., i] = np.clip((plane - mean) * c + mean + b, 0.0, 1.0)
    return out


@dataclass(frozen=True)
class PhotometricAugment:
    """Training-time photometric augmentation (``INPUT.AUGMENT.*``), per image.

    Applied to fluorescence channels (``channel_role(name) == "fluorescence"``) of a [0, 1]
    image, in this order: gamma ``x ** g`` with ``g`` log-uniform in ``gamma``; gain ``x * c``
    with ``c`` log-uniform in ``contrast`` (values pushed above 1 saturate, as a bright body
    saturates a camera); offset ``+ b`` with ``b ~ U(-brightness, brightness)``; with
    probability ``blur_prob`` a Gaussian blur of sigma ``U(blur_sigma)`` px (defocus); with
    probability ``noise_prob`` additive Gaussian noise of sd ``U(0, noise_std)``; clip to
    [0, 1]. ``dic`` gets the blur only, and only with ``blur_dic``; ``otsu_mask`` is never
    touched. Ranges are (lo, hi) with 0 < lo <= hi (sigma lo >= 0).
    """

    enabled: bool = False
    gamma: tuple[float, float] = (1.0, 1.0)
    contrast: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    blur_dic: bool = False
    noise_prob: float = 0.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        for key, rng_, low in (("GAMMA", self.gamma, 1e-9), ("CONTRAST", self.contrast, 1e-9)):
            if len(rng_) != 2 or not (low <= rng_[0] <= rng_[1]):
                raise ConfigError(f"INPUT.AUGMENT.{key} must be (lo, hi) with 0 < lo <= hi, got {list(rng_)}")
        if len(self.blur_sigma) != 2 or not (0 <= self.blur_sigma[0] <= self.blur_sigma[1]):
            raise ConfigError(
                f"INPUT.AUGMENT.BLUR_SIGMA must be (lo, hi) with 0 <= lo <= hi, got {list(self.blur_sigma)}"
            )

    @classmethod
    def from_config(cls, node: Any) -> PhotometricAugment:
        """From a config's ``INPUT.AUGMENT`` node (None → disabled)."""
        if node is None:
            return cls()
        return cls(
            enabled=bool(node.ENABLED),
            gamma=tuple(float(v) for v in node.GAMMA),
            contrast=tuple(float(v) for v in node.CONTRAST),
            brightness=float(node.BRIGHTNESS),
            blur_prob=float(node.BLUR_PROB),
            blur_sigma=tuple(float(v) for v in node.BLUR_SIGMA),
            blur_dic=bool(node.BLUR_DIC),
            noise_prob=float(node.NOISE_PROB),
            noise_std=float(node.NOISE_STD),
        )


def _log_uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(lo if lo == hi else np.exp(rng.uniform(np.log(lo), np.log(hi))))


def photometric_augment(
    image: np.ndarray, recipe: Sequence[str], aug: PhotometricAugment, rng: np.random.Generator
) -> np.ndarray:
    """Apply :class:`PhotometricAugment` to an (H, W, C) float32 [0, 1] image in recipe order.

    One draw per recipe NAME, in recipe order (``["gray", "gray", "gray"]`` stays three equal
    planes); channels that are neither fluorescence nor ``dic`` with ``blur_dic`` (e.g.
    ``otsu_mask``) are copied unchanged and consume no draws. Returns a new float32 array.
    """
    out = image.astype(np.float32, copy=True)
    if not aug.enabled:
        return out
    done: dict[str, np.ndarray] = {}
    for i, name in enumerate(recipe):
        if name in done:
            out[..., i] = done[name]
            continue
        fluo = channel_role(name) == "fluorescence" and name != "otsu_mask"
        if not fluo and not (name == "dic" and aug.blur_dic):
            continue
        plane = out[..., i]
        if fluo:
            plane = np.power(np.clip(plane, 0.0, 1.0), _log_uniform(rng, aug.gamma))
            plane = plane * _log_uniform(rng, aug.contrast) + float(
                rng.uniform(-aug.brightness, aug.brightness)
            )
        if aug.blur_prob > 0 and rng.random() < aug.blur_prob:
            sigma = float(rng.uniform(*aug.blur_sigma))
            if sigma > 0:
                plane = cv2.GaussianBlur(np.ascontiguousarray(plane, dtype=np.float32), (0, 0), sigma)
        if fluo and aug.noise_prob > 0 and rng.random() < aug.noise_prob:
            sd = float(rng.uniform(0.0, aug.noise_std))
            plane = plane + rng.normal(0.0, sd, size=plane.shape).astype(np.float32)
        done[name] = np.clip(plane, 0.0, 1.0).astype(np.float32)
        out[..., i] = done[name]
    return out
