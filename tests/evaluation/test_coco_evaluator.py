"""COCO evaluation: perfect predictions give AP 1, shifted ones less; rescaling; dense maxDets;
phase confusion; files written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pcna_seg.data.catalog import register_coco
from pcna_seg.data.coco_io import write_coco
from pcna_seg.data.structures import labels_to_masks, make_annotation
from pcna_seg.data.synthetic.nuclei import make_pcna_frame
from pcna_seg.evaluation.coco_eval import COCOEvaluator

PHASES = ["G1/G2", "S", "M"]


def _dataset(tmp_path: Path, name: str, n_images: int = 2, size: int = 64):
    rng = np.random.default_rng(0)
    records, truth = [], []
    for i in range(n_images):
        frame = make_pcna_frame(rng, size, size, n_nuclei=6)
        ids, masks = labels_to_masks(frame.labels)
        cats = [PHASES.index(frame.phases[int(k)]) for k in ids]
        anns = [make_annotation(m, c) for m, c in zip(masks, cats)]
        records.append(
            {
                "file_name": str(tmp_path / f"{i}.tif"),
                "height": size,
                "width": size,
                "image_id": i,
                "annotations": anns,
            }
        )
        truth.append((masks, cats))
    write_coco(tmp_path / f"{name}.json", records, PHASES)
    register_coco(name, tmp_path / f"{name}.json")
    return truth


def _predict(masks, cats, shift: int = 0, scale: int = 1, n_classes: int = 3):
    m = np.stack(masks).astype(np.float32)
    m = np.roll(m, shift, axis=2)
    if scale > 1:
        m = np.kron(m, np.ones((1, scale, scale), dtype=np.float32))
    boxes = []
    for mk in m:
        ys, xs = np.nonzero(mk)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    n = len(masks)
    probs = torch.full((n, n_classes + 1), 0.05)
    probs[torch.arange(n), torch.tensor(cats) + 1] = 0.85
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor(cats, dtype=torch.int64) + 1,
        "scores": torch.linspace(0.99, 0.9, n),
        "image_masks": torch.from_numpy(m)[:, None],  # pasted in the input frame
        "class_probs": probs,
    }


def _run(ev: COCOEvaluator, truth, size: int = 64, **kw):
    scale = kw.get("scale", 1)
    kw.setdefault("n_classes", len(ev.dataset_class_names()))
    for i, (masks, cats) in enumerate(truth):
        inp = {
            "image": torch.zeros(3, size * scale, size * scale),
            "image_id": i,
            "height": size,
            "width": size,
        }
        ev.process([inp], [_predict(masks, cats, **kw)])
    return ev.evaluate()


def test_perfect_predictions_score_one_and_files_written(tmp_path: Path) -> None:
    truth = _dataset(tmp_path, "ev_perfect")
    out = tmp_path / "eval"
    res = _run(COCOEvaluator("ev_perfect", out), truth)
    for task in ("bbox", "segm"):
        assert res[task]["AP"] == pytest.approx(1.0) and res[task]["AP50"] == pytest.approx(1.0)
    conf = res["phase_confusion"]
    assert conf["accuracy"] == 1.0 and conf["matched"] == sum(len(m) for m, _ in truth)
    saved = json.loads((out / "results.json").read_text())
    assert saved["segm"]["AP"] == pytest.approx(1.0) and saved["phase_confusion"]["matrix"] == conf["matrix"]
    dets = json.loads((out / "coco_instances_results.json").read_text())
    assert len(dets[0]["class_probs"]) == 4 and "segmentation" in dets[0]
    assert (out / "phase_confusion.png").stat().st_size > 1000


def test_predictions_are_rescaled_to_original_size(tmp_path: Path) -> None:
    truth = _dataset(tmp_path, "ev_scaled")
    res = _run(COCOEvaluator("ev_scaled"), truth, scale=2)  # model saw a 2x upscaled image
    assert res["segm"]["AP"] == pytest.approx(1.0) and res["bbox"]["AP"] == pytest.approx(1.0)


def test_shifted_predictions_score_lower(tmp_path: Path) -> None:
    truth = _dataset(tmp_path, "ev_shift")
    res = _run(COCOEvaluator("ev_shift"), truth, shift=4)
    assert res["segm"]["AP"] < 0.9 and res["segm"]["AP75"] < 1.0


def test_dense_images_use_the_largest_max_dets(tmp_path: Path) -> None:
    size, masks = 128, []
    for r in range(10):
        for c in range(15):
            m = np.zeros((size, size), dtype=bool)
            m[r * 12 + 2 : r * 12 + 8, c * 8 + 1 : c * 8 + 7] = True
            masks.append(m)
    rec = {
        "file_name": "d.tif",
        "height": size,
        "width": size,
        "image_id": 0,
        "annotations": [make_annotation(m, 0) for m in masks],
    }
    write_coco(tmp_path / "dense.json", [rec], ["nucleus"])
    register_coco("ev_dense", tmp_path / "dense.json")
    truth = [(masks, [0] * len(masks))]
    dense = _run(COCOEvaluator("ev_dense", max_dets=[1, 10, 300]), truth, size=size)
    capped = _run(COCOEvaluator("ev_dense", max_dets=[1, 10, 100]), truth, size=size)
    assert dense["segm"]["AP"] == pytest.approx(1.0) and "AR@300" in dense["segm"]
    assert capped["segm"]["AP"] < 0.8
    assert "phase_confusion" not in dense  # single-class data


def test_swapped_phase_shows_in_confusion(tmp_path: Path) -> None:
    truth = _dataset(tmp_path, "ev_swap", n_images=1)
    masks, cats = truth[0]
    wrong = list(cats)
    wrong[0] = (cats[0] + 1) % 3
    res = _run(COCOEvaluator("ev_swap"), [(masks, wrong)])
    mat = np.array(res["phase_confusion"]["matrix"])
    assert mat[cats[0], wrong[0]] == 1 and mat[:3, :3].sum() == len(masks)
    assert res["phase_confusion"]["accuracy"] == pytest.approx((len(masks) - 1) / len(masks))


def test_cell_level_metrics_come_with_ap(tmp_path: Path) -> None:
    truth = _dataset(tmp_path, "ev_cells")
    out = tmp_path / "eval"
    perfect = _run(COCOEvaluator("ev_cells", out), truth)
    assert perfect["cells"]["f1@0.5"] == 1.0 and perfect["cells"]["dsb_score"] == pytest.approx(1.0)
    assert perfect["phases"]["balanced_accuracy"] == 1.0
    saved = json.loads((out / "results.json").read_text())
    n = sum(len(m) for m, _ in truth)
    assert saved["cells"]["n_gt"] == n and saved["phases"]["n_matched"] == n
    masks, cats = truth[0]
    missing = _run(COCOEvaluator("ev_cells"), [(masks[1:], cats[1:]), truth[1]])  # one nucleus missed
    assert missing["cells"]["count_mae"] == pytest.approx(0.5)
    assert missing["cells"]["f1@0.5"] == pytest.approx(2 * (n - 1) / (2 * (n - 1) + 1))


def test_cell_metrics_count_one_detection_per_nucleus(tmp_path: Path) -> None:
    """Per-class NMS may keep a second, lower-scoring phase on the same nucleus: not a second cell."""
    truth = _dataset(tmp_path, "ev_dupes", n_images=1)
    masks, cats = truth[0]
    ev = COCOEvaluator("ev_dupes")
    one = _predict(masks, cats)
    other = _predict(masks, [(c + 1) % 3 for c in cats], shift=2)  # overlaps partly (IoU > 0.5)
    other["scores"] = other["scores"] - 0.3  # still above the 0.5 score threshold
    both = {k: torch.cat([one[k], other[k]]) for k in one}
    inp = {"image": torch.zeros(3, 64, 64), "image_id": 0, "height": 64, "width": 64}
    ev.process([inp], [both])
    res = ev.evaluate()
    assert res["cells"]["f1@0.5"] == 1.0 and res["cells"]["count_mae"] == 0.0
    assert res["phases"]["balanced_accuracy"] == 1.0  # the better-scoring phase is the one kept
