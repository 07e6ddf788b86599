"""Kaggle run-length codec: column-major, 1-based pairs; CSV flavours; errors name the source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pcna_seg.data.rle_csv import (
    kaggle_to_coco_rle,
    kaggle_to_mask,
    mask_to_kaggle,
    read_rle_csv,
    write_rle_csv,
)
from pcna_seg.data.structures import rle_to_mask
from pcna_seg.errors import DataError


def test_column_major_one_based() -> None:
    mask = np.zeros((3, 4), dtype=bool)
    mask[0:2, 0] = True  # pixels 1, 2
    mask[2, 1] = True  # pixel 6
    mask[:, 3] = True  # pixels 10-12
    assert mask_to_kaggle(mask) == "1 2 6 1 10 3"
    assert np.array_equal(kaggle_to_mask("1 2 6 1 10 3", 3, 4), mask)


def test_random_roundtrip_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = rng.integers(1, 40, size=2)
        mask = rng.random((h, w)) < rng.random()
        enc = mask_to_kaggle(mask)
        assert np.array_equal(kaggle_to_mask(enc, h, w), mask)
        assert np.array_equal(rle_to_mask(kaggle_to_coco_rle(enc, h, w)), mask)


def test_unsorted_and_overlapping_runs_are_merged() -> None:
    m = kaggle_to_mask("8 2 1 3 2 4", 4, 3)  # 1-5 and 8-9
    assert np.flatnonzero(m.ravel(order="F")).tolist() == [0, 1, 2, 3, 4, 7, 8]


@pytest.mark.parametrize("enc", ["11 3", "0 2", "1 13", "3 0"])
def test_run_past_image(enc: str) -> None:
    with pytest.raises(DataError, match="labels.csv ImageId abc"):
        kaggle_to_coco_rle(enc, 3, 4, where="labels.csv ImageId abc")


def test_bad_strings() -> None:
    with pytest.raises(DataError, match="odd number"):
        kaggle_to_coco_rle("1 2 3", 3, 4, "x")
    with pytest.raises(DataError, match="non-integers"):
        kaggle_to_coco_rle("1 a", 3, 4, "x")


def test_csv_flavours(tmp_path: Path) -> None:
    rows = [("a", "1 2"), ("a", "5 1"), ("b", ""), ("c", "1 1")]
    write_rle_csv(tmp_path / "labels.csv", rows)
    t = read_rle_csv(tmp_path / "labels.csv")
    assert t.encodings == {"a": ["1 2", "5 1"], "b": [], "c": []}
    assert t.placeholders == {"c"} and t.sizes == {} and t.usage == {}
    sizes = {"a": (3, 4), "b": (5, 6), "c": (2, 2)}
    write_rle_csv(tmp_path / "sol.csv", rows, sizes=sizes, usage={"b": "Private"})
    t = read_rle_csv(tmp_path / "sol.csv")
    assert t.sizes == sizes and t.usage == {"a": "Public", "b": "Private", "c": "Public"}


def test_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_rle_csv(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("Id,Pixels\nx,1 2\n")
    with pytest.raises(DataError, match="bad.csv needs the columns"):
        read_rle_csv(bad)
    bad.write_text("ImageId,EncodedPixels,Height,Width,Usage\nx,1 2,3,4,Public\nx,3 1,5,4,Public\n")
    with pytest.raises(DataError, match="two different sizes"):
        read_rle_csv(bad)


def test_crop_helpers_match_pycocotools() -> None:
    from pycocotools import mask as mask_utils

    from pcna_seg.data.rle_csv import crop_to_rle, rle_to_crop

    rng = np.random.default_rng(1)
    for t in range(200):
        h, w = (int(v) for v in rng.integers(1, 50, size=2))
        m = np.zeros((h, w), dtype=np.uint8, order="F")
        if t % 7:
            y, x = rng.integers(0, h), rng.integers(0, w)
            m[y : y + rng.integers(1, h + 1), x : x + rng.integers(1, w + 1)] = 1
            m &= (rng.random((h, w)) < rng.choice([0.5, 1.0])).astype(np.uint8)
        rle = mask_utils.encode(m)
        sl, crop = rle_to_crop({"size": [h, w], "counts": rle["counts"].decode()})
        full = np.zeros((h, w), dtype=bool)
        full[sl] = crop
        assert np.array_equal(full, m.astype(bool))
        if crop.size:
            assert crop_to_rle(crop, sl[0].start, sl[1].start, h, w)["counts"] == rle["counts"]
