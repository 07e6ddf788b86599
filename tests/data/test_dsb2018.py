"""DSB2018 converter: masks and CSV modes round-trip the synthetic ground truth exactly."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from _roundtrip import assert_roundtrip

from pcna_seg.data.converters import get_converter
from pcna_seg.data.converters.dsb2018 import convert
from pcna_seg.data.image_io import read_image
from pcna_seg.data.rle_csv import read_rle_csv, write_rle_csv
from pcna_seg.data.synthetic import get_writer
from pcna_seg.data.synthetic.write_dsb2018 import write
from pcna_seg.errors import DataError


@pytest.fixture(scope="module")
def dsb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    src = tmp_path_factory.mktemp("dsb_src")
    gt = write(src, seed=3, n_images=5, solution_csv=True)
    return src, gt


def _sample(src: Path, gt, blank: bool = False) -> Path:
    key = next(g.key for g in gt.images if (g.labels.max() == 0) == blank)
    return src / "stage1_train" / key


def test_registered() -> None:
    assert get_converter("dsb2018") is convert
    assert get_writer("dsb2018") is write


def test_writer_layout(dsb) -> None:
    src, gt = dsb
    assert len(gt.images) == 5 and gt.images[-1].labels.max() == 0
    shapes = set()
    for g in gt.images:
        img = read_image(src / "stage1_train" / g.key / "images" / f"{g.key}.png")
        assert img.dtype == np.uint8 and img.shape[:2] == g.labels.shape
        shapes.add(img.shape[2] if img.ndim == 3 else 1)
        masks = list((src / "stage1_train" / g.key / "masks").glob("*.png"))
        assert len(masks) == g.labels.max()
    assert shapes == {1, 3, 4}
    table = read_rle_csv(src / "stage1_train_labels.csv")
    assert table.encodings[gt.images[-1].key] == []


@pytest.mark.parametrize("mode", ["masks", "csv"])
def test_roundtrip(dsb, tmp_path: Path, mode: str) -> None:
    src, gt = dsb
    card = convert(src, tmp_path / "out", annotations=mode, progress=False, workers=2)
    assert_roundtrip(gt, tmp_path / "out")
    assert card["images"] == 5 and card["blank_images"] == 1
    assert card["instances"] == sum(int(g.labels.max()) for g in gt.images)
    assert card["split"]["by"] == "image"
    out_img = read_image(tmp_path / "out" / "images" / f"{gt.images[0].key}.png")
    assert out_img.ndim == 2 and out_img.dtype == np.uint8


def test_solution_csv(dsb, tmp_path: Path) -> None:
    src, gt = dsb
    card = convert(
        src / "stage1_train",
        tmp_path / "out",
        annotations="csv",
        csv_path=src / "stage1_solution.csv",
        usage="Public",
        progress=False,
        workers=1,
    )
    data = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert {im["id"] for im in data["images"]} == {g.key for i, g in enumerate(gt.images) if i % 2 == 0}
    assert any("Private 2" in n for n in card["notes"]) and any("skipped" in n for n in card["notes"])


def _expect_error(src: Path, out: Path, needle: str, **kw) -> None:
    with pytest.raises(DataError) as exc:
        convert(src, out, progress=False, workers=1, **kw)
    assert needle in str(exc.value)
    assert not (out / "annotations.json").exists()


def _copy(src: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "src"
    shutil.copytree(src, dst)
    return dst


def test_missing_image(dsb, tmp_path: Path) -> None:
    src = _copy(dsb[0], tmp_path)
    sample = _sample(src, dsb[1])
    (sample / "images" / f"{sample.name}.png").unlink()
    _expect_error(src, tmp_path / "out", f"{sample.name}.png")


def test_corrupt_image(dsb, tmp_path: Path) -> None:
    src = _copy(dsb[0], tmp_path)
    sample = _sample(src, dsb[1])
    (sample / "images" / f"{sample.name}.png").write_bytes(b"\x89PNG broken")
    _expect_error(src, tmp_path / "out", f"{sample.name}.png")


def test_missing_masks_folder(dsb, tmp_path: Path) -> None:
    src = _copy(dsb[0], tmp_path)
    sample = _sample(src, dsb[1], blank=True)
    (sample / "masks").rmdir()
    _expect_error(src, tmp_path / "out", str(sample / "masks"))


def test_corrupt_mask(dsb, tmp_path: Path) -> None:
    src = _copy(dsb[0], tmp_path)
    mask = sorted((_sample(src, dsb[1]) / "masks").glob("*.png"))[0]
    mask.write_bytes(b"not a png")
    _expect_error(src, tmp_path / "out", mask.name)


def test_mask_size_mismatch(dsb, tmp_path: Path) -> None:
    src = _copy(dsb[0], tmp_path)
    mask = sorted((_sample(src, dsb[1]) / "masks").glob("*.png"))[0]
    cv2.imwrite(str(mask), np.full((7, 9), 255, np.uint8))
    _expect_error(src, tmp_path / "out", mask.name)


def test_rle_past_image(dsb, tmp_path: Path) -> None:
    src, gt = dsb
    key = gt.images[0].key
    h, w = gt.images[0].labels.shape
    csv_path = tmp_path / "bad.csv"
    write_rle_csv(csv_path, [(key, f"{h * w - 3} 10")])
    _expect_error(src, tmp_path / "out", f"{csv_path} ImageId {key}", annotations="csv", csv_path=csv_path)


def test_solution_size_mismatch(dsb, tmp_path: Path) -> None:
    src, gt = dsb
    key = gt.images[0].key
    csv_path = tmp_path / "sol.csv"
    write_rle_csv(csv_path, [(key, "1 3")], sizes={key: (5, 5)})
    _expect_error(src, tmp_path / "out", key, annotations="csv", csv_path=csv_path)


def test_csv_unknown_image(dsb, tmp_path: Path) -> None:
    csv_path = tmp_path / "labels.csv"
    write_rle_csv(csv_path, [("deadbeef", "1 3")])
    _expect_error(dsb[0], tmp_path / "out", str(csv_path), annotations="csv", csv_path=csv_path)


def test_empty_mask_skipped_and_overlap_resolved(dsb, tmp_path: Path) -> None:
    src = _copy(dsb[0], tmp_path)
    sample = _sample(src, dsb[1])
    masks = sorted((sample / "masks").glob("*.png"))
    first = cv2.imread(str(masks[0]), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(sample / "masks" / "empty.png"), np.zeros_like(first))
    cv2.imwrite(str(sample / "masks" / "zbig.png"), cv2.dilate(first, np.ones((5, 5), np.uint8)))
    card = convert(src, tmp_path / "out", progress=False, workers=1)
    notes = " ".join(card["notes"])
    assert "1 empty instance masks were skipped" in notes and "overlapping pixels" in notes
    data = json.loads((tmp_path / "out" / "annotations.json").read_text())
    n = sum(a["image_id"] == sample.name for a in data["annotations"])
    assert n == len(masks) + 1  # the big copy is kept as a ring around the original


def test_finish_rles_many_instances() -> None:
    from pycocotools import mask as mask_utils

    from pcna_seg.data.converters.base import finish_rles

    m = np.zeros((40, 60, 300), dtype=np.uint8, order="F")
    for i in range(300):  # 300 disjoint 2-px objects (> 255 trips pycocotools' batched area)
        m[(i // 30) * 4, (i % 30) * 2 : (i % 30) * 2 + 2, i] = 1
    anns, n_overlap, n_hidden = finish_rles(mask_utils.encode(m), 40, 60)
    assert n_overlap == n_hidden == 0 and len(anns) == 300 and all(a["area"] == 2.0 for a in anns)
