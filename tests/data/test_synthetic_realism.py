"""Synthetic realism: the acquisition simulator, the clean mode's stability, photometric
augmentation and the mapper contract with augmentation on."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _roundtrip import assert_roundtrip
from scipy import ndimage

from pcna_seg.config.config import load_config
from pcna_seg.config.defaults import get_default_config
from pcna_seg.data import transforms as T
from pcna_seg.data.converters import get_converter
from pcna_seg.data.image_io import read_image
from pcna_seg.data.synthetic import WRITERS, get_writer
from pcna_seg.data.synthetic import nuclei as N
from pcna_seg.data.synthetic import realism as R
from pcna_seg.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

# Checksums of the clean (default) generator, recorded BEFORE the realistic mode was added:
# the clean mode must stay pixel-identical so every existing test and benchmark is unchanged.
CLEAN_ARRAYS = {
    "pcna_frame": "8ebe8628fabb1c0e",
    "nuclei_image": "841b46c60bf8b1a0",
    "movie": "1e04df085b75c6df",
    "livedead": "e5e4e6d9ecce88eb",
}
CLEAN_WRITERS = {
    "bbbc039": "cbd4a4c54dfca32a",
    "ctc": "b314dd1d7ba7656d",
    "deepcell_npz": "edd0d96e080d7081",
    "deepcell_trks": "9288c6634546a01a",
    "dsb2018": "48f63e68e3595659",
    "livecell": "2aa7ac4256871816",
    "pcna_masks": "2e8179fdf0f47074",
    "pcna_via": "fe989ab49eb93fc2",
}


def _hash_arrays(*arrays: np.ndarray) -> str:
    d = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        d.update(str(a.dtype).encode())
        d.update(str(a.shape).encode())
        d.update(a.tobytes())
    return d.hexdigest()[:16]


def _hash_folder(root: Path) -> str:
    d = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            d.update(str(f.relative_to(root)).encode())
            d.update(f.read_bytes())
    return d.hexdigest()[:16]


def test_clean_generator_unchanged():
    f = N.make_pcna_frame(np.random.default_rng(0), 96, 128, n_nuclei=12)
    g = N.make_nuclei_image(np.random.default_rng(1), 80, 100, n_nuclei=8)
    m = N.make_pcna_movie(np.random.default_rng(2), 3, 64, 64, 6)
    ld, sem = N.make_livedead_frame(np.random.default_rng(3), 120, 160, density=1e-3)
    got = {
        "pcna_frame": _hash_arrays(f.labels, f.channels["pcna"], f.channels["dic"]),
        "nuclei_image": _hash_arrays(g.labels, g.channels["gray"]),
        "movie": _hash_arrays(*[x.labels for x in m], *[x.channels["pcna"] for x in m]),
        "livedead": _hash_arrays(ld.labels, sem, ld.channels["hoechst"], ld.channels["draq7"]),
    }
    assert got == CLEAN_ARRAYS


def test_clean_writers_unchanged(tmp_path):
    got = {}
    for fmt in sorted(WRITERS):
        get_writer(fmt)(tmp_path / fmt, seed=0)
        got[fmt] = _hash_folder(tmp_path / fmt)
    assert got == CLEAN_WRITERS


# ---------------------------------------------------------------------------------------------
# realistic style: the acquisition simulator
# ---------------------------------------------------------------------------------------------
def _realistic_images(n=6, size=192, n_nuclei=30):
    out = []
    for s in range(n):
        rng = np.random.default_rng(100 + s)
        style = R.draw_style(rng, R.Realism())
        out.append((style, N.make_nuclei_image(rng, size, size, n_nuclei, realism=style)))
    return out


@pytest.fixture(scope="module")
def realistic():
    return _realistic_images()


def test_brightness_spread_within_image(realistic):
    checked = 0
    for _, f in realistic:
        ids = np.unique(f.labels)[1:]
        if len(ids) < 15:
            continue
        img = f.channels["gray"].astype(np.float64)
        bg = np.median(img[(f.labels == 0) & ~f.debris])
        means = ndimage.mean(img, f.labels, ids) - bg
        p5, p95 = np.percentile(means, [5, 95])
        assert p95 / max(p5, 1.0) >= 5.0
        checked += 1
    assert checked >= 3


def test_saturated_bodies_and_debris_outside_labels(realistic):
    saturated = debris = 0
    for style, f in realistic:
        img = f.channels["gray"]
        sat = img >= R.white_level(style)
        if style.n_bright and f.labels.any():
            assert sat.any() and (f.labels[sat] > 0).mean() > 0.9  # white pixels sit on nuclei
            saturated += 1
        assert not (f.labels[f.debris] > 0).any()  # debris is never labelled
        if f.debris.any():
            ring = ndimage.binary_dilation(f.debris, iterations=4) & ~f.debris & (f.labels == 0)
            assert img[f.debris].mean() > img[ring].mean()  # and it is visible
            debris += 1
    assert saturated >= 2 and debris >= 3


def test_sizes_shapes_and_clumps_vary(realistic):
    diam, counts, touching = [], [], 0
    for _, f in realistic:
        ids, areas = np.unique(f.labels[f.labels > 0], return_counts=True)
        if len(ids):
            diam.append(2 * np.sqrt(np.median(areas) / np.pi))
            counts.append(len(ids))
            grown = ndimage.grey_dilation(f.labels, size=(3, 3))
            touching += int(((grown != f.labels) & (f.labels > 0) & (grown > 0)).any())
    assert max(diam) / min(diam) > 2.5 and max(counts) / min(counts) > 3
    assert touching >= 3


def test_clean_is_the_default_and_styles_are_checked():
    a = N.make_nuclei_image(np.random.default_rng(1), 80, 100, n_nuclei=8)
    b = N.make_nuclei_image(np.random.default_rng(1), 80, 100, n_nuclei=8, realism="clean")
    assert np.array_equal(a.channels["gray"], b.channels["gray"]) and a.debris is None
    with pytest.raises(ValueError, match="style"):
        R.resolve("fancy")


def test_dsb_realistic_colour_images_and_exact_labels(tmp_path):
    gt = get_writer("dsb2018")(tmp_path / "src", seed=1, n_images=12, style="realistic")
    colour = grey = 0
    for g in gt.images:
        img = read_image(tmp_path / "src" / "stage1_train" / g.key / "images" / f"{g.key}.png")
        if img.ndim == 3 and not np.array_equal(img[..., 0], img[..., 2]):
            colour += 1
            if g.labels.any():  # dark nuclei on a light background
                assert img[g.labels > 0].mean() < img[g.labels == 0].mean()
        else:
            grey += 1
    assert colour >= 1 and grey >= 6
    get_converter("dsb2018")(tmp_path / "src", tmp_path / "out", progress=False)
    assert_roundtrip(gt, tmp_path / "out")


def test_pcna_realistic_exact_labels(tmp_path):
    small = dict(n_movies=2, n_frames=2, height=128, width=128, n_nuclei=12)
    gt = get_writer("pcna_masks")(tmp_path / "src", seed=2, style="realistic", **small)
    get_converter("pcna_masks")(tmp_path / "src", tmp_path / "out", progress=False)
    assert_roundtrip(gt, tmp_path / "out")
    via = get_writer("pcna_via")(tmp_path / "via", seed=2, style="realistic", **small)
    assert sum(int(g.labels.max()) for g in via.images) > 0


def test_every_writer_takes_a_style(tmp_path):
    for fmt in sorted(WRITERS):
        gt = get_writer(fmt)(tmp_path / fmt, seed=0, style="realistic")
        assert sum(int(g.labels.max()) for g in gt.images) > 0, fmt


# ---------------------------------------------------------------------------------------------
# photometric augmentation
# ---------------------------------------------------------------------------------------------
STRONG = T.PhotometricAugment(
    enabled=True,
    gamma=(0.5, 2.0),
    contrast=(0.4, 1.6),
    brightness=0.1,
    blur_prob=1.0,
    blur_sigma=(1.0, 2.0),
    noise_prob=1.0,
    noise_std=0.05,
)


def _image(seed=0):
    rng = np.random.default_rng(seed)
    img = rng.random((40, 50, 5)).astype(np.float32)
    img[..., 4] = (img[..., 4] > 0.5).astype(np.float32)  # a binary otsu_mask plane
    return img


def test_augment_deterministic_and_fluorescence_only():
    recipe = ["gray", "pcna", "dic", "pcna", "otsu_mask"]
    img = _image()
    a = T.photometric_augment(img, recipe, STRONG, np.random.default_rng(5))
    b = T.photometric_augment(img, recipe, STRONG, np.random.default_rng(5))
    c = T.photometric_augment(img, recipe, STRONG, np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)  # seeded → reproducible
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a[..., 2], img[..., 2]) and np.array_equal(a[..., 4], img[..., 4])  # dic, otsu
    assert not np.array_equal(a[..., 0], img[..., 0]) and not np.array_equal(a[..., 1], img[..., 1])
    assert np.array_equal(a[..., 1], a[..., 3])  # one draw per channel name
    blur_dic = T.photometric_augment(img, recipe, replace(STRONG, blur_dic=True), np.random.default_rng(5))
    assert not np.array_equal(blur_dic[..., 2], img[..., 2])  # DIC: blur only, on request
    assert np.array_equal(blur_dic[..., 4], img[..., 4])
    off = T.photometric_augment(img, recipe, replace(STRONG, enabled=False), np.random.default_rng(5))
    assert np.array_equal(off, img)


def test_augment_ranges_checked_and_config():
    with pytest.raises(ConfigError, match="INPUT.AUGMENT.GAMMA"):
        T.PhotometricAugment(gamma=(2.0, 1.0))
    with pytest.raises(ConfigError, match="INPUT.AUGMENT.BLUR_SIGMA"):
        T.PhotometricAugment(blur_sigma=(1.0,))
    cfg = get_default_config()
    assert T.PhotometricAugment.from_config(cfg.INPUT.AUGMENT) == T.PhotometricAugment()  # off
    quick = load_config(str(ROOT / "configs/quick_schedules/quick_stage1_kaggle.yaml"))
    aug = T.PhotometricAugment.from_config(quick.INPUT.AUGMENT)
    assert aug.enabled and aug.gamma[0] < 1 < aug.gamma[1]
    assert tuple(quick.INPUT.SCALE.TRAIN_JITTER) == (0.8, 1.25)
    with pytest.raises(ConfigError, match="INPUT.AUGMENT.NOISE_STD"):
        load_config(
            str(ROOT / "configs/quick_schedules/quick_stage1_kaggle.yaml"), ["INPUT.AUGMENT.NOISE_STD", "2.0"]
        )
