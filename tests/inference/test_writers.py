"""Writers: label TIFF, overlay PNG, objects.csv columns/rows; input discovery."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pcna_seg.data.image_io import read_image, write_image
from pcna_seg.errors import DataError
from pcna_seg.inference.predictor import Prediction
from pcna_seg.inference.writers import PredictionWriter, csv_columns, find_inputs

NAMES = ["G1/G2", "S", "M"]


def _prediction() -> Prediction:
    masks = np.zeros((4, 40, 50), bool)
    masks[0, 5:15, 5:20] = True
    masks[1, 10:25, 15:30] = True  # overlaps 0, higher score
    masks[2, 30:38, 40:48] = True
    masks[3, 31:37, 41:47] = True  # entirely inside 2, lower score: absent from the label image
    boxes = np.array([[5, 5, 20, 15], [15, 10, 30, 25], [40, 30, 48, 38], [41, 31, 47, 37]], np.float32)
    probs = np.array([[0.1, 0.6, 0.2, 0.1], [0.2, 0.1, 0.7, 0.0], [0.0, 0.1, 0.1, 0.8], [0.5, 0.5, 0, 0]])
    return Prediction.from_masks(masks, boxes, [0.6, 0.9, 0.8, 0.3], [0, 1, 2, 0], NAMES, probs)


def test_frame_files_and_csv(tmp_path: Path) -> None:
    pred = _prediction()
    image = np.random.default_rng(0).integers(0, 4000, (40, 50)).astype(np.uint16)
    writer = PredictionWriter(tmp_path / "out", NAMES)
    lab_a = writer.write_frame("movie_0000", pred, image)
    writer.write_frame("movie_0001", pred.select([0, 1]), image)
    writer.write_frame("blank", pred.select([]), image)  # no objects: files, no rows
    csv_path = writer.close()

    labels = tifffile.imread(tmp_path / "out/movie_0000_labels.tif")
    assert labels.dtype == np.uint16 and labels.shape == (40, 50)
    np.testing.assert_array_equal(labels, lab_a)
    np.testing.assert_array_equal(labels, pred.to_label_image())
    overlay = read_image(tmp_path / "out/movie_0000_overlay.png")
    assert overlay.ndim == 3 and overlay.shape[0] > 40 and overlay.shape[1] >= 50
    assert len(np.unique(overlay.reshape(-1, overlay.shape[2]), axis=0)) > 10  # an image, not a blank

    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        assert reader.fieldnames == csv_columns(NAMES)
    assert reader.fieldnames[:4] == ["frame", "object", "phase", "score"]
    assert "prob_G1/G2" in reader.fieldnames and reader.fieldnames[-4:] == [
        "bbox_x0",
        "bbox_y0",
        "bbox_x1",
        "bbox_y1",
    ]
    n_a = len(np.unique(labels[labels > 0]))
    assert n_a == 3  # the covered instance is not an object
    assert len(rows) == n_a + 2 and (tmp_path / "out/blank_labels.tif").is_file()
    first = [r for r in rows if r["frame"] == "movie_0000"]
    for r in first:
        obj = int(r["object"])
        i = obj - 1
        assert r["phase"] == NAMES[pred.labels[i]]
        assert float(r["score"]) == pytest.approx(pred.scores[i], abs=1e-4)
        assert int(r["area_px"]) == int((labels == obj).sum())
        ys, xs = np.nonzero(labels == obj)
        assert float(r["centroid_y"]) == pytest.approx(ys.mean(), abs=0.01)
        assert (int(r["bbox_x0"]), int(r["bbox_x1"])) == (xs.min(), xs.max() + 1)
        assert (int(r["bbox_y0"]), int(r["bbox_y1"])) == (ys.min(), ys.max() + 1)
        assert sum(float(r[f"prob_{n}"]) for n in NAMES) == pytest.approx(1, abs=1e-3)
    assert sum(writer.counts.values()) == len(rows)
    table = writer.count_table()
    assert "total" in table and str(len(rows)) in table


def test_find_inputs_layouts(tmp_path: Path) -> None:
    from pcna_seg.data.converters.pcna import convert_masks
    from pcna_seg.data.synthetic.write_pcna import write_masks

    write_masks(tmp_path / "stacked", seed=0, n_movies=2, n_frames=2, height=48, width=48, n_nuclei=3)
    frames = find_inputs(str(tmp_path / "stacked"))
    assert [f.name for f in frames] == [
        "mcf10a_s01_0000",
        "mcf10a_s01_0001",
        "mcf10a_s02_0000",
        "mcf10a_s02_0001",
    ]
    assert frames[0].channels == ("gray", "pcna", "dic")
    ch = frames[1].load(["pcna", "dic"])
    assert ch["pcna"].shape == ch["dic"].shape == (48, 48)

    write_masks(
        tmp_path / "perframe", seed=0, n_movies=1, n_frames=2, height=48, width=48, n_nuclei=3, stacked=False
    )
    for p in (tmp_path / "perframe").glob("*dic*"):
        p.unlink()
    frames = find_inputs(str(tmp_path / "perframe"))
    assert (
        len(frames) == 2
        and frames[0].channels == ("gray", "pcna")
        and "expected DIC" in frames[0].missing_hint
    )

    grey = tmp_path / "grey"
    write_image(grey / "a.png", np.zeros((30, 20), np.uint8))
    write_image(grey / "b.tif", np.zeros((3, 30, 20), np.uint16))  # a stack: 3 frames
    frames = find_inputs(str(grey))
    assert [f.name for f in frames] == ["a", "b_0000", "b_0001", "b_0002"]
    assert frames[2].load(["gray"])["gray"].shape == (30, 20) and frames[0].channels == ("gray",)
    assert len(find_inputs(str(grey / "*.png"))) == 1

    convert_masks(tmp_path / "stacked", tmp_path / "prepared", val_fraction=0.5, progress=False)
    frames = find_inputs(str(tmp_path / "prepared/val.json"))
    assert len(frames) == 2 and "dic" in frames[0].channels
    assert len(find_inputs("prepared_val", str(tmp_path))) == 2  # a dataset name under the root

    (tmp_path / "empty").mkdir()
    for bad in (str(tmp_path / "empty"), str(tmp_path / "nothing*.tif"), "no_such_dataset"):
        with pytest.raises(DataError):
            find_inputs(bad, str(tmp_path))
