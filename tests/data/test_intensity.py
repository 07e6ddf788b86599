"""Intensity scaling (pcna_seg.data.intensity): one percentile rule for both branches."""

from __future__ import annotations

import numpy as np
import pytest

from pcna_seg.data.intensity import display_stretch, percentile_normalize, percentiles, to_uint8
from pcna_seg.unet.tiling import normalize_frame

Q = np.r_[np.linspace(0, 100, 101), 0.5, 1.0, 2.0, 98.0, 99.5, 99.8, 99.9, 33.333]


@pytest.mark.parametrize(
    "dtype,top", [(np.uint8, 256), (np.uint16, 65536), (np.uint16, 300), (np.float32, 1)]
)
def test_percentiles_equal_numpy_to_the_last_bit(dtype, top):
    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 1000, 4321):
        a = (
            (rng.random(n) * top).astype(dtype)
            if dtype == np.float32
            else rng.integers(0, top, n).astype(dtype)
        )
        assert np.array_equal(percentiles(a, Q), np.percentile(a.astype(np.float64), Q))


def test_clip_keeps_or_cuts_values_beyond_the_percentiles():
    rng = np.random.default_rng(2)
    img = rng.integers(100, 1000, (40, 50)).astype(np.uint16)
    lo, hi = np.percentile(img.astype(np.float64), (2, 98))
    kept = percentile_normalize(img, 2, 98, clip=False)
    assert kept.dtype == np.float32 and kept.shape == img.shape
    assert np.allclose(kept, (img - lo) / (hi - lo), atol=1e-6)
    assert kept.min() < 0 and kept.max() > 1
    assert np.array_equal(percentile_normalize(img, 2, 98), np.clip(kept, 0, 1))
    gam = percentile_normalize(img, 2, 98, gamma=2.0)
    assert np.allclose(gam, np.clip(kept, 0, 1) ** 2, atol=1e-6)
    with pytest.raises(ValueError, match="gamma"):
        percentile_normalize(img, gamma=2.0, clip=False)


def test_coinciding_percentiles_give_zeros_not_inf():
    """A mostly empty channel (few bright cells, p_low == p_high) used to become inf in the
    U-Net's float16 tiles (divided by a 1e-6 floor); both branches now give zeros."""
    img = np.zeros((1, 100, 100), np.uint16)
    img[0, :3, :3] = 5000
    tiles = normalize_frame(img, "percentile", (1.0, 99.8)).astype(np.float16)
    assert np.isfinite(tiles).all() and not tiles.any()
    assert not percentile_normalize(img[0], 1.0, 99.8).any()
    assert not normalize_frame(np.full((2, 5, 5), 7, np.uint16), "minmax").any()


def test_display_stretch_and_uint8():
    img = np.arange(1000, dtype=np.uint16).reshape(25, 40)
    d = display_stretch(img)
    assert d.dtype == np.float32 and d.min() == 0.0 and d.max() == 1.0
    assert np.array_equal(d, percentile_normalize(img, 1.0, 99.5))
    u = to_uint8(img, 0, 999)
    assert u.dtype == np.uint8 and u[0, 0] == 0 and u[-1, -1] == 255 and u.flat[500] == 128
    assert to_uint8(img, 5, 5.5).max() == 255  # a range under one level counts as one
    assert np.array_equal(to_uint8(img, 0, 999, np.float32), u)
