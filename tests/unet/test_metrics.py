"""Binned PR metrics equal torchmetrics', IoU/Dice, instances from 3-class maps, SEG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAveragePrecision, MulticlassPrecisionRecallCurve

from pcna_seg.unet.metrics import (
    SegmentationMetrics,
    binned_confmat,
    instances_from_contour,
    seg_matches,
    seg_score,
)


def test_binned_confmat_equals_torchmetrics_state() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3000, 3, generator=g) * 2, 1)
    target = torch.randint(0, 3, (3000,), generator=g)
    ref = MulticlassPrecisionRecallCurve(3, thresholds=11)
    ref.update(probs, target)
    ours = binned_confmat(probs, target, ref.thresholds)
    assert torch.equal(ours, ref.confmat)
    ap_ref = MulticlassAveragePrecision(3, thresholds=11, average=None)
    ap_ref.update(probs, target)
    m = SegmentationMetrics(["bg", "a", "b"], "livedead", pr_thresholds=11)
    logits = torch.log(probs).T.reshape(1, 3, 50, 60)
    m.update(logits, target.reshape(1, 50, 60))
    out = m.compute()
    assert [out["pr_auc/bg"], out["pr_auc/a"], out["pr_auc/b"]] == pytest.approx(
        ap_ref.compute().tolist(), abs=1e-6
    )


def test_perfect_prediction_scores_one() -> None:
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    target[:, 5:15, 5:15] = 1
    target[:, 20:30, 20:30] = 2
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 20
    m = SegmentationMetrics(["background", "DAPI", "Cy5"], "livedead", pr_thresholds=21)
    m.update(logits, target)
    out = m.compute()
    for c in ("DAPI", "Cy5"):
        assert out[f"pr_auc/{c}"] == pytest.approx(1.0)
        assert out[f"iou/{c}"] == pytest.approx(1.0)
        assert out[f"dice/{c}"] == pytest.approx(1.0)
    cm = m.confusion()
    assert cm.sum() == 2 * 32 * 32 and np.trace(cm) == cm.sum()
    prec, rec = m.pr_curves()["Cy5"]
    assert prec.shape == rec.shape == (22,)


def test_half_wrong_iou() -> None:
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    target[0, :, :5] = 1  # 50 DAPI pixels
    pred = torch.zeros_like(target)
    pred[0, :, :5] = 1
    pred[0, :5, :5] = 0  # 25 missed
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float() * 10
    m = SegmentationMetrics(["background", "DAPI", "Cy5"], "livedead", pr_thresholds=11)
    m.update(logits, target)
    assert m.compute()["iou/DAPI"] == pytest.approx(0.5)


def _two_touching_nuclei() -> np.ndarray:
    lab = np.zeros((20, 30), np.uint8)
    lab[4:16, 3:27] = 2  # contour ring of the pair
    lab[5:15, 4:14] = 1
    lab[5:15, 16:26] = 1
    lab[5:15, 14:16] = 2  # separating contour between the two nuclei
    return lab


def test_instances_from_contour_splits_touching() -> None:
    inst = instances_from_contour(_two_touching_nuclei())
    assert inst.max() == 2
    assert np.all(inst[_two_touching_nuclei() > 0] > 0)  # contour pixels are grown into
    assert inst[10, 5] != inst[10, 24]


def test_seg_definition() -> None:
    gt = np.zeros((10, 10), int)
    gt[0:4, 0:4] = 1  # 16 px
    gt[6:10, 6:10] = 2  # 16 px
    pred = np.zeros_like(gt)
    pred[0:4, 0:5] = 7  # covers all of obj 1: J = 16/20
    pred[6:10, 6:8] = 3  # covers exactly half of obj 2: not > 50% -> 0
    s = seg_matches(gt, pred)
    assert s.tolist() == pytest.approx([0.8, 0.0])
    assert seg_score(gt, pred) == pytest.approx(0.4)
    assert np.isnan(seg_score(np.zeros_like(gt), pred))


def test_contour_and_count_modes() -> None:
    lab = torch.from_numpy(_two_touching_nuclei().astype(np.int64))[None, :, :28]
    logits = torch.nn.functional.one_hot(lab, 3).permute(0, 3, 1, 2).float() * 10
    m = SegmentationMetrics(["background", "nucleus", "contour"], "contour", pr_thresholds=11)
    m.update(logits, lab)
    assert m.compute()["seg"] == pytest.approx(1.0)
    t = torch.zeros(1, 16, 16, dtype=torch.long)
    t[0, 2:5, 2:5] = 1
    t[0, 10:13, 10:13] = 1
    logit = torch.full((1, 1, 16, 16), -5.0)
    logit[0, 0, 2:5, 2:5] = 5.0  # one of two blobs found
    mc = SegmentationMetrics(["background", "nucleus"], "count", pr_thresholds=11)
    mc.update(logit, t)
    out = mc.compute()
    assert out["count_mae"] == pytest.approx(1.0)
    assert out["iou/nucleus"] == pytest.approx(0.5)
