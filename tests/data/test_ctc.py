"""Cell Tracking Challenge converter against the synthetic CTC layout."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _roundtrip import assert_roundtrip
from pycocotools.coco import COCO

from pcna_seg.data.converters import get_converter
from pcna_seg.data.converters.ctc import convert
from pcna_seg.data.structures import rle_to_mask
from pcna_seg.data.synthetic import get_writer
from pcna_seg.data.synthetic.base import GroundTruth
from pcna_seg.data.synthetic.write_ctc import write
from pcna_seg.errors import DataError

DS = "Fluo-N2DL-Synth"


def _write(tmp_path: Path, **opts) -> tuple[Path, GroundTruth]:
    src = tmp_path / "src"
    opts = {"seed": 0, "n_images": 4, "height": 64, "width": 64, "n_nuclei": 5} | opts
    return src / DS, write(src, **opts)


def _assert_fails(src: Path, out: Path, name: str, **opts) -> str:
    with pytest.raises(DataError) as info:
        convert(src, out, progress=False, **opts)
    assert name in str(info.value)
    assert not (out / "annotations.json").exists()
    return str(info.value)


def test_registered() -> None:
    assert get_converter("ctc") is convert
    assert get_writer("ctc") is write


def test_roundtrip_gold_tracks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    gt = write(src, seed=1, n_images=6, seg_every=2)
    assert len(gt.images) == 6 and any(g.labels.max() == 0 for g in gt.images)
    card = convert(src, tmp_path / "out", progress=False)  # parent of the dataset folder
    coco = assert_roundtrip(gt, tmp_path / "out")
    assert card["name"] == DS and card["sequences"] == 2 and card["split"]["by"] == "sequence"
    assert card["blank_images"] == 1 and card["dtypes"] == {"uint16": 6}
    raw = tifffile.imread(src / DS / "02" / "t004.tif")
    assert np.array_equal(tifffile.imread(tmp_path / "out" / "images" / f"{DS}_02_t004.tif"), raw)
    # track ids: the TRA marker each SEG instance overlaps
    for ann in coco.dataset["annotations"]:
        seq, frame = ann["image_id"].split("_")[-2:]
        markers = tifffile.imread(src / DS / f"{seq}_GT" / "TRA" / f"man_track{frame[1:]}.tif")
        under = markers[rle_to_mask(ann["segmentation"])]
        assert ann["track_id"] == np.bincount(under[under > 0]).argmax()
    tracks = json.loads((tmp_path / "out" / "tracks.json").read_text())
    assert set(tracks) == {f"{DS}_01", f"{DS}_02"}
    assert any(t["parent"] for t in tracks[f"{DS}_01"].values()), "a division is recorded"


def test_silver_truth_and_four_digits(tmp_path: Path) -> None:
    src, gt = _write(tmp_path, silver_truth=True, digits=4)
    assert (src / "01" / "t0003.tif").is_file() and (src / "01_ST" / "SEG" / "man_seg0003.tif").is_file()
    card = convert(src, tmp_path / "out", use_silver_truth=True, progress=False)
    assert_roundtrip(gt, tmp_path / "out")  # gold frames keep gold labels, the rest silver
    assert f"{DS}_01_t0001" in gt.by_key()
    assert "4 frame(s) from gold SEG, 4 from silver SEG" in card["notes"]
    gold_only = convert(src, tmp_path / "out_gold", progress=False)
    assert gold_only["images"] == 4
    coco = COCO(str(tmp_path / "out_gold" / "annotations.json"))
    assert set(coco.imgs) == {f"{DS}_{s}_t{t:04d}" for s in ("01", "02") for t in (0, 2)}


def test_incomplete_seg_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src, _ = _write(tmp_path)
    seg_path = src / "01_GT" / "SEG" / "man_seg002.tif"
    seg = tifffile.imread(seg_path)
    seg[seg == seg.max()] = 0
    tifffile.imwrite(seg_path, seg)
    with caplog.at_level(logging.WARNING):
        card = convert(src, tmp_path / "out", progress=False)
    assert any("1 tracked cell(s) in 1 frame(s)" in n for n in card["notes"])
    assert any("no SEG label" in r.getMessage() for r in caplog.records)


def test_seg_without_raw_frame(tmp_path: Path) -> None:
    src, _ = _write(tmp_path)
    (src / "02" / "t002.tif").unlink()
    _assert_fails(src, tmp_path / "out", "man_seg002.tif")


def test_3d_rejected(tmp_path: Path) -> None:
    src, _ = _write(tmp_path)
    tifffile.imwrite(src / "01" / "t000.tif", np.zeros((5, 64, 64), dtype=np.uint16))
    assert "only 2D" in _assert_fails(src, tmp_path / "out", "t000.tif")
    src2, _ = _write(tmp_path / "b")
    tifffile.imwrite(src2 / "01_GT" / "SEG" / "man_seg_002_012.tif", np.zeros((64, 64), dtype=np.uint16))
    assert "only 2D" in _assert_fails(src2, tmp_path / "out2", "man_seg_002_012.tif")


def test_size_mismatch_and_corrupt_tiff(tmp_path: Path) -> None:
    src, _ = _write(tmp_path)
    seg_path = src / "01_GT" / "SEG" / "man_seg002.tif"
    tifffile.imwrite(seg_path, np.zeros((60, 64), dtype=np.uint16))
    assert "(60, 64)" in _assert_fails(src, tmp_path / "out", "man_seg002.tif")
    seg_path.write_bytes(b"II*\x00 truncated tiff")
    _assert_fails(src, tmp_path / "out2", "man_seg002.tif")


def test_fractional_labels_and_bad_man_track(tmp_path: Path) -> None:
    src, _ = _write(tmp_path)
    seg_path = src / "02_GT" / "SEG" / "man_seg000.tif"
    tifffile.imwrite(seg_path, np.full((64, 64), 0.5, dtype=np.float32))
    assert "non-integer" in _assert_fails(src, tmp_path / "out", "man_seg000.tif")
    src2, _ = _write(tmp_path / "b")
    (src2 / "01_GT" / "TRA" / "man_track.txt").write_text("1 0 3 0\n2 0 x 0\n")
    assert "line 2" in _assert_fails(src2, tmp_path / "out2", "man_track.txt")


def test_no_seg_at_all(tmp_path: Path) -> None:
    src, _ = _write(tmp_path, n_sequences=1)
    for p in (src / "01_GT" / "SEG").iterdir():
        p.unlink()
    assert "use_silver_truth" in _assert_fails(src, tmp_path / "out", str(src))
    _assert_fails(tmp_path / "nowhere", tmp_path / "out2", "nowhere")
