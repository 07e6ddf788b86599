"""Label images → class targets (contour band, live/dead semantic, binary count)."""

from __future__ import annotations

import numpy as np
import pytest

from pcna_seg.errors import ConfigError, DataError
from pcna_seg.unet.targets import (
    MODE_CLASSES,
    check_label_values,
    contour_targets,
    count_targets,
    dead_from_intensity,
    livedead_semantic,
    make_targets,
)


def _two_touching_squares() -> np.ndarray:
    lab = np.zeros((20, 30), np.int32)
    lab[4:14, 4:14] = 1
    lab[4:14, 14:24] = 2  # touches instance 1 along column 13|14
    return lab


def test_contour_width_one_is_inner_outline():
    lab = _two_touching_squares()
    t = contour_targets(lab, boundary_width=1)
    assert t.dtype == np.uint8 and t.shape == lab.shape
    assert set(np.unique(t)) == {0, 1, 2}
    assert (t[lab == 0] == 0).all()  # contour never leaves the instances
    # the outline of instance 1: its outer ring plus the column touching instance 2
    assert (t[4, 4:14] == 2).all() and (t[4:14, 4] == 2).all() and (t[4:14, 13] == 2).all()
    assert (t[4:14, 14] == 2).all()  # and instance 2's side of the shared edge
    assert (t[5:13, 5:13] == 1).all()


@pytest.mark.parametrize("width", [1, 2, 3])
def test_contour_band_width(width):
    lab = np.zeros((30, 30), np.int32)
    lab[5:25, 5:25] = 7
    t = contour_targets(lab, boundary_width=width)
    inner = 20 - 2 * width
    assert (t == 1).sum() == inner * inner
    assert (t == 2).sum() == 400 - inner * inner
    with pytest.raises(ConfigError):
        contour_targets(lab, boundary_width=0)


def test_livedead_semantic_and_intensity_rule():
    lab = _two_touching_squares()
    sem = livedead_semantic(lab, {2})
    assert sem.dtype == np.uint8
    assert (sem[lab == 1] == 1).all() and (sem[lab == 2] == 2).all() and (sem[lab == 0] == 0).all()
    assert np.array_equal(livedead_semantic(lab, np.array([False, False, True])), sem)
    draq7 = np.full(lab.shape, 100, np.uint16)
    draq7[lab == 2] = 900
    dead = dead_from_intensity(lab, draq7)
    assert dead.tolist() == [False, False, True]
    assert dead_from_intensity(lab, draq7, threshold=1000).tolist() == [False, False, False]


def test_count_and_make_targets_dispatch():
    lab = _two_touching_squares()
    assert np.array_equal(count_targets(lab), (lab > 0).astype(np.uint8))
    assert np.array_equal(make_targets(lab, "count"), (lab > 0).astype(np.uint8))
    assert np.array_equal(make_targets(lab, "contour", 2), contour_targets(lab, 2))
    sem = livedead_semantic(lab, {1})
    assert np.array_equal(make_targets(sem, "livedead"), sem)
    assert len(MODE_CLASSES["count"]) == 2
    with pytest.raises(ConfigError, match="UNET.MODE"):
        make_targets(lab, "nonsense")


def test_label_value_checks_name_the_file():
    check_label_values(np.array([[0, 1], [2, 0]], np.uint8), "livedead", "ok.tif")
    with pytest.raises(DataError, match=r"bad\.tif.*\[3\]"):
        check_label_values(np.array([[0, 3]], np.uint8), "livedead", "bad.tif")
    with pytest.raises(DataError, match="neg.tif"):
        check_label_values(np.array([[0, -1]], np.int32), "contour", "neg.tif")
    with pytest.raises(DataError, match="float.tif"):
        check_label_values(np.zeros((2, 2), np.float32), "count", "float.tif")
