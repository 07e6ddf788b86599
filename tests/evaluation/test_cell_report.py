"""tools/evaluate.py on label-image folders: numbers, report files, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _cli import expect_error, load_tool

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    return load_tool("evaluate")


def _labels(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((96, 96), dtype=np.uint16)
    for k in range(n):  # a grid of 12x12 squares, never touching
        y, x = 4 + 16 * (k // 5), 4 + 16 * (k % 5)
        img[y : y + 12, x : x + 12] = k + 1 + int(rng.integers(0, 3)) * 100
    return img


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    for i in range(3):
        g = _labels(10, i)
        tifffile.imwrite(gt / f"img{i}.tif", g)
        p = g.copy()
        if i == 2:
            p[p == p.max()] = 0  # one nucleus missed in image 2
        tifffile.imwrite(pred / f"img{i}_labels.tif", p)
    (pred / "img0_overlay.png").write_bytes(b"not a label image")  # ignored by the pairing
    return gt, pred


def _fails(capsys, argv: list[str], match: str) -> None:
    expect_error(capsys, "evaluate", argv, match)


def test_report_numbers_and_files(folders, tmp_path, capsys):
    gt, pred = folders
    out = tmp_path / "eval"
    _tool().main(["--gt", str(gt), "--pred", str(pred), "--output", str(out)])
    m = json.loads((out / "metrics.json").read_text())["cells"]
    assert m["n_gt"] == 30 and m["n_pred"] == 29
    assert m["tp"][0] == 29 and m["fn"][0] == 1 and m["fp"][0] == 0
    assert m["f1@0.5"] == pytest.approx(58 / 59)
    assert m["count_mae"] == pytest.approx(1 / 3)
    assert [f["name"] for f in m["per_frame"]] == ["img0", "img1", "img2"]
    for name in ("report.md", "f1_vs_iou.png", "count_errors.png", "worst_images.png"):
        assert (out / name).stat().st_size > 0
    assert "F1@0.5 0.983" in capsys.readouterr().out
    # a second run refuses to mix into the report, --overwrite replaces it
    _fails(capsys, ["--gt", str(gt), "--pred", str(pred), "--output", str(out)], "--overwrite")
    _tool().main(["--gt", str(gt), "--pred", str(pred), "--output", str(out), "--overwrite"])


def test_bad_inputs_are_one_line(folders, tmp_path, capsys):
    gt, pred = folders
    out = str(tmp_path / "eval")
    (pred / "img2_labels.tif").unlink()
    _fails(capsys, ["--gt", str(gt), "--pred", str(pred), "--output", out], "no prediction partner")
    tifffile.imwrite(pred / "img2_labels.tif", np.zeros((10, 10), np.uint16))
    _fails(capsys, ["--gt", str(gt), "--pred", str(pred), "--output", out], "img2_labels.tif is (10, 10)")
    _fails(capsys, ["--gt", str(tmp_path / "nope"), "--pred", str(pred), "--output", out], "not found")
    assert not Path(out).exists()  # nothing written for bad input


def test_dataset_ground_truth_and_phases_from_objects_csv(tmp_path, capsys):
    """GT = a prepared dataset, PRED = a prediction-tool folder: cells and phases scored by name."""
    import csv

    from pcna_seg.data.converters.pcna import convert_masks
    from pcna_seg.data.synthetic.write_pcna import write_masks
    from pcna_seg.evaluation.cell_report import dataset_truth

    write_masks(tmp_path / "raw", seed=0, n_movies=1, n_frames=2, height=64, width=64, n_nuclei=5)
    convert_masks(tmp_path / "raw", tmp_path / "ds", val_fraction=0.0, progress=False)
    gt = str(tmp_path / "ds/annotations.json")
    truth, names = dataset_truth(gt)
    pred = tmp_path / "pred"
    pred.mkdir()
    rows, swapped = [], 0
    for key, (labels, classes) in truth.items():
        tifffile.imwrite(pred / f"{key}_labels.tif", labels.astype(np.uint16))
        for lab, cls in classes.items():
            if lab == 1:  # one nucleus per frame called the next phase
                cls, swapped = (cls + 1) % len(names), swapped + 1
            rows.append({"frame": key, "object": lab, "phase": names[cls]})
    with open(pred / "objects.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["frame", "object", "phase"])
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "eval"
    _tool().main(["--gt", gt, "--pred", str(pred), "--output", str(out)])
    m = json.loads((out / "metrics.json").read_text())
    assert m["cells"]["f1@0.5"] == 1.0 and m["cells"]["seg"] == 1.0
    n = m["cells"]["n_gt"]
    assert m["phases"]["n_matched"] == n and m["phases"]["accuracy"] == pytest.approx((n - swapped) / n)
    assert (out / "phase_confusion.png").stat().st_size > 0 and "balanced accuracy" in capsys.readouterr().out
    (pred / f"{next(iter(truth))}_labels.tif").unlink()
    _fails(
        capsys,
        ["--gt", gt, "--pred", str(pred), "--output", str(tmp_path / "e2")],
        "no predicted label image",
    )


def test_matching_agrees_with_pycocotools():
    """Same true positives as COCOeval's matching (IoU >= t) on disjoint masks, every threshold."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from pcna_seg.data.structures import mask_to_rle
    from pcna_seg.evaluation.cell_metrics import evaluate_frame

    rng = np.random.default_rng(3)
    gt, pred = np.zeros((96, 96), np.int32), np.zeros((96, 96), np.int32)
    for k in range(20):
        y, x = 4 + 18 * (k // 5), 4 + 18 * (k % 5)
        gt[y : y + 12, x : x + 12] = k + 1
        dy, dx = rng.integers(-4, 5, 2)
        pred[y + dy : y + dy + 12, x + dx : x + dx + int(rng.integers(8, 14))] = k + 1

    def anns(lab, with_score):
        out = []
        for k in range(1, lab.max() + 1):
            m = lab == k
            ys, xs = np.nonzero(m)
            a = {
                "id": k,
                "image_id": 1,
                "category_id": 1,
                "segmentation": mask_to_rle(m),
                "area": int(m.sum()),
                "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
                "iscrowd": 0,
            }
            if with_score:
                a["score"] = 1.0 - k / 100
            out.append(a)
        return out

    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "height": 96, "width": 96}], "categories": [{"id": 1, "name": "n"}],
                    "annotations": anns(gt, False)}  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(anns(pred, True)), "segm")
        ev.params.maxDets = [100]
        ev.evaluate()
    img = next(e for e in ev.evalImgs if e is not None and e["aRng"] == ev.params.areaRng[0])
    coco_tp = (img["dtMatches"] > 0).sum(axis=1)
    ours = evaluate_frame(gt, pred, criterion="ge")
    assert ours.tp.tolist() == coco_tp.tolist() and 0 < ours.tp[0] < 20


def test_inputs_are_protected_and_bad_labels_named(folders, tmp_path, capsys):
    gt, pred = folders
    before = sorted(p.name for p in gt.iterdir())
    _fails(
        capsys,
        ["--gt", str(gt), "--pred", str(pred), "--output", str(gt), "--overwrite"],
        "is or holds the input",
    )
    _fails(
        capsys,
        ["--gt", str(gt), "--pred", str(pred), "--output", str(tmp_path), "--overwrite"],
        "is or holds",
    )
    assert sorted(p.name for p in gt.iterdir()) == before
    tifffile.imwrite(pred / "img1_labels.tif", -np.ones((96, 96), np.int16))
    _fails(
        capsys,
        ["--gt", str(gt), "--pred", str(pred), "--output", str(tmp_path / "e")],
        "img1_labels.tif holds negative",
    )
