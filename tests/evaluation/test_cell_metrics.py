"""Cell-level metrics: hand-computed cases, the > vs ≥ rule, optimal matching, a brute-force check."""

from __future__ import annotations

import numpy as np
import pytest

from pcna_seg.evaluation.cell_metrics import (
    CellEvaluator,
    Overlaps,
    compute_overlaps,
    evaluate_frame,
    match_at,
    phase_metrics,
    summarize_frames,
)


def _square(shape=(40, 40), y=5, x=5, h=10, w=10, label=1, into=None):
    out = np.zeros(shape, dtype=np.int32) if into is None else into
    out[y : y + h, x : x + w] = label
    return out


def test_identical_labels_score_one_everywhere():
    gt = _square(label=3)
    _square(y=20, x=20, label=9, into=gt)
    s = summarize_frames([evaluate_frame(gt, gt.copy())])
    assert s["f1"] == [1.0] * 10 and s["pq"] == [1.0] * 10
    assert s["dsb_score"] == 1.0 and s["seg"] == 1.0 and s["count_mae"] == 0.0


def test_shifted_nucleus_hand_computed():
    gt, pred = _square(), _square(x=7)  # intersection 80, union 120: IoU 2/3
    r = evaluate_frame(gt, pred)
    assert r.tp.tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]  # matched at t = 0.50 .. 0.65
    assert r.dsb_score == pytest.approx(0.4)
    s = summarize_frames([r])
    assert s["pq@0.5"] == pytest.approx(2 / 3) and s["seg"] == pytest.approx(2 / 3)
    assert s["f1"][4] == 0.0 and s["fp"][4] == 1 and s["fn"][4] == 1


def test_split_nucleus_is_a_miss_under_strict_rule_and_a_hit_under_ge():
    gt = _square(h=10, w=20)
    pred = _square(h=10, w=10, label=1)
    _square(x=15, h=10, w=10, label=2, into=pred)  # two halves, IoU exactly 0.5 each
    strict, loose = evaluate_frame(gt, pred, criterion="gt"), evaluate_frame(gt, pred, criterion="ge")
    assert strict.tp[0] == 0 and loose.tp[0] == 1
    assert strict.seg_sum == 0.0  # |R∩S| = 0.5 |R| is not > 0.5 |R|
    with pytest.raises(ValueError, match="criterion"):
        evaluate_frame(gt, pred, criterion="gte")


def test_empty_frames_and_counts():
    empty = np.zeros((20, 20), dtype=np.uint16)
    assert evaluate_frame(empty, empty).dsb_score == 1.0
    only_pred = evaluate_frame(empty, _square((20, 20), 2, 2, 5, 5))
    assert only_pred.fp.tolist() == [1] * 10 and only_pred.dsb_score == 0.0
    s = summarize_frames([only_pred, evaluate_frame(_square((20, 20), 2, 2, 5, 5), empty)])
    assert s["count_mae"] == 1.0 and s["count_rel_error"] == 1.0 and s["n_gt"] == 1 and s["n_pred"] == 1


def test_optimal_matching_beats_greedy_below_half():
    # gt A (0), B (1); pred X (0) touches A (0.40) and B (0.30); pred Y (1) touches only A (0.35).
    ov = Overlaps(
        gt_ids=np.array([1, 2]),
        pred_ids=np.array([1, 2]),
        gt_area=np.array([100, 100]),
        pred_area=np.array([100, 100]),
        pairs=np.array([[0, 0], [1, 0], [0, 1]]),
        inter=np.array([400 / 7, 600 / 13, 700 / 13.5]),  # IoU 0.40, 0.30, 0.35
    )
    pairs, iou = match_at(ov, 0.25)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (1, 0)]  # greedy would keep only A-X
    assert iou.sum() == pytest.approx(0.65, abs=1e-6)


def test_overlaps_match_a_brute_force_loop():
    rng = np.random.default_rng(0)
    gt = np.zeros((64, 64), dtype=np.int32)
    pred = np.zeros_like(gt)
    for k in range(1, 25):  # painted in order, so later objects cover earlier ones
        for img, lab in ((gt, k * 3), (pred, k * 7 + 100)):
            y, x, h, w = rng.integers(0, 54, 2).tolist() + rng.integers(3, 12, 2).tolist()
            img[y : y + h, x : x + w] = lab
    ov = compute_overlaps(gt, pred)
    got = {(int(ov.gt_ids[g]), int(ov.pred_ids[p])): int(n) for (g, p), n in zip(ov.pairs, ov.inter)}
    want = {}
    for g in np.unique(gt[gt > 0]):
        for p in np.unique(pred[pred > 0]):
            n = int(np.sum((gt == g) & (pred == p)))
            if n:
                want[(int(g), int(p))] = n
    assert got == want
    r = evaluate_frame(gt, pred)
    for i, t in enumerate(r.thresholds):  # above 0.5 matching is unique: count pairs directly
        n = sum(
            1 for (g, p), inter in want.items() if inter / (np.sum(gt == g) + np.sum(pred == p) - inter) > t
        )
        assert r.tp[i] == n


def test_bad_label_images_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        evaluate_frame(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="non-integer"):
        evaluate_frame(np.full((4, 4), 0.5), np.zeros((4, 4), int))


def test_phase_metrics_on_matched_cells():
    names = ["G1/G2", "S", "M"]
    matched = [(0, 0), (1, 1), (2, 2), (3, 3)]
    m = phase_metrics(matched, gt_phase=[0, 0, 1, 2], pred_phase=[0, 1, 1, 2], class_names=names)
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert m["recall"] == {"G1/G2": 0.5, "S": 1.0, "M": 1.0}
    assert m["precision"]["S"] == 0.5 and m["balanced_accuracy"] == pytest.approx(2.5 / 3)
    assert m["accuracy"] == 0.75


def test_evaluator_accumulates_frames_and_phases():
    gt = _square(label=1)
    _square(y=20, x=20, label=2, into=gt)
    pred = _square(label=5)  # finds nucleus 1 only
    ev = CellEvaluator(class_names=["G1/G2", "S", "M"])
    ev.process(gt, pred, "f0", gt_phases={1: 2, 2: 0}, pred_phases={5: 2})
    ev.process(gt, gt, "f1", gt_phases={1: 2, 2: 0}, pred_phases={1: 1, 2: 0})
    out = ev.evaluate()
    assert out["cells"]["tp"][0] == 3 and out["cells"]["fn"][0] == 1
    assert [f["name"] for f in out["cells"]["per_frame"]] == ["f0", "f1"]
    assert out["phases"]["confusion"] == [[1, 0, 0], [0, 0, 0], [0, 1, 1]]
