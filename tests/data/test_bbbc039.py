"""BBBC039 converter: graph-coloured masks → instances, metadata splits, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _roundtrip import assert_roundtrip, assert_split_leak_free

from pcna_seg.data.converters import get_converter
from pcna_seg.data.converters.bbbc039 import colours_to_labels, convert, sequence_of
from pcna_seg.data.image_io import read_image, write_image
from pcna_seg.data.synthetic import get_writer
from pcna_seg.data.synthetic.write_bbbc039 import colour_labels, split_components, write
from pcna_seg.errors import DataError


@pytest.fixture(scope="module")
def bbbc(tmp_path_factory: pytest.TempPathFactory):
    src = tmp_path_factory.mktemp("bbbc_src")
    return src, write(src, seed=5)


def _copy(src: Path, tmp_path: Path) -> Path:
    shutil.copytree(src, tmp_path / "src")
    return tmp_path / "src"


def test_registered() -> None:
    assert get_converter("bbbc039") is convert
    assert get_writer("bbbc039") is write


def test_writer_layout_and_colouring(bbbc) -> None:
    src, gt = bbbc
    g = gt.images[0]
    img = read_image(src / "images" / f"{g.key}.tif")
    mask = read_image(src / "masks" / f"{g.key}.png")
    assert img.dtype == np.uint16 and img.shape == g.labels.shape
    assert mask.dtype == np.uint8 and mask.shape == (*g.labels.shape, 3)
    assert not mask[..., 1:].any() and 1 <= mask[..., 0].max() <= 4
    touching = 0  # touching instances got different colours
    lab, col = g.labels, mask[..., 0]
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = lab[max(dy, 0) :, max(dx, 0) : lab.shape[1] + min(dx, 0)]
        b = lab[: lab.shape[0] - dy, max(-dx, 0) : lab.shape[1] - max(dx, 0)]
        ca = col[max(dy, 0) :, max(dx, 0) : lab.shape[1] + min(dx, 0)]
        cb = col[: lab.shape[0] - dy, max(-dx, 0) : lab.shape[1] - max(dx, 0)]
        diff = (a > 0) & (b > 0) & (a != b)
        touching += int(diff.sum())
        assert np.all(ca[diff] != cb[diff])
    assert touching > 0, "the generator should produce touching nuclei"
    assert (src / "metadata" / "training.txt").read_text().splitlines()[0] == f"{g.key}.png"


def test_colour_helpers() -> None:
    lab = np.zeros((6, 9), dtype=np.int32)
    lab[1:3, 1:3] = 1
    lab[3:5, 3:5] = 1  # diagonal-touching part stays one 8-connected instance
    lab[1:3, 6:8] = 1  # a separate fragment becomes its own instance
    lab[1:3, 3:5] = 2
    split = split_components(lab)
    assert split.max() == 3
    col = colour_labels(split)
    back, dropped = colours_to_labels(col)
    assert dropped == 0 and len(np.unique(back)) == 4
    assert colours_to_labels(col, min_area=5)[1] == 2  # the two 4-px objects
    assert sequence_of("IXMtest_A02_s1_w1051DCFE9") == "IXMtest_A02" and sequence_of("foo") is None


def test_roundtrip_metadata_split(bbbc, tmp_path: Path) -> None:
    src, gt = bbbc
    out = tmp_path / "out"
    card = convert(src, out, progress=False, workers=2)
    assert_roundtrip(gt, out, check_split=False)  # the given split is not by well
    split = json.loads((out / "split.json").read_text())
    names = [g.key for g in gt.images]
    assert split["train"] == names[:3] and split["val"] == names[3:4] and split["test"] == names[4:]
    test = json.loads((out / "test.json").read_text())
    assert [im["id"] for im in test["images"]] == names[4:]
    assert card["blank_images"] == 1 and card["dtypes"] == {"uint16": 6}
    assert read_image(out / "images" / f"{names[0]}.tif").dtype == np.uint16


def test_roundtrip_random_split_by_well(bbbc, tmp_path: Path) -> None:
    src, gt = bbbc
    card = convert(src, tmp_path / "out", use_metadata_split=False, progress=False, workers=1)
    assert card["split"]["by"] == "sequence" and card["sequences"] == 3
    assert_split_leak_free(tmp_path / "out")
    assert not (tmp_path / "out" / "test.json").exists()


def _expect_error(src: Path, out: Path, needle: str) -> None:
    with pytest.raises(DataError) as exc:
        convert(src, out, progress=False, workers=1)
    assert needle in str(exc.value)
    assert not (out / "annotations.json").exists()


def test_missing_mask(bbbc, tmp_path: Path) -> None:
    src = _copy(bbbc[0], tmp_path)
    key = bbbc[1].images[1].key
    (src / "masks" / f"{key}.png").unlink()
    _expect_error(src, tmp_path / "out", f"{key}.png")


def test_size_mismatch(bbbc, tmp_path: Path) -> None:
    src = _copy(bbbc[0], tmp_path)
    key = bbbc[1].images[2].key
    write_image(src / "masks" / f"{key}.png", np.zeros((10, 10, 3), np.uint8))
    _expect_error(src, tmp_path / "out", f"{key}.png")


def test_corrupt_tiff(bbbc, tmp_path: Path) -> None:
    src = _copy(bbbc[0], tmp_path)
    key = bbbc[1].images[0].key
    (src / "images" / f"{key}.tif").write_bytes(b"II*\x00garbage")
    _expect_error(src, tmp_path / "out", f"{key}.tif")


def test_nan_pixels(bbbc, tmp_path: Path) -> None:
    src = _copy(bbbc[0], tmp_path)
    key = bbbc[1].images[0].key
    write_image(src / "images" / f"{key}.tif", np.full((128, 160), np.nan, np.float32))
    _expect_error(src, tmp_path / "out", f"{key}.tif")


def test_metadata_lists_unknown_image(bbbc, tmp_path: Path) -> None:
    src = _copy(bbbc[0], tmp_path)
    with open(src / "metadata" / "test.txt", "a") as fh:
        fh.write("nothere.png\n")
    _expect_error(src, tmp_path / "out", "test.txt")
