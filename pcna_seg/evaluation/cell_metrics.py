"""Cell-level metrics on label images: matching, F1 / PQ / DSB score / SEG / counts, phases.

Inputs are instance label images of one frame, ``gt`` and ``pred``: (H, W) integers, 0 =
background, any positive ids (need not be contiguous). Everything is vectorised: the overlap
of every (gt, pred) pair comes from one pass over the pixels (a joint histogram of the pairs
that touch, kept sparse), never from a loop over object pairs.

Definitions (IoU thresholds ``t`` in 0.50:0.05:0.95 by default):

- a gt and a predicted object **match at t** when their IoU is > t (``criterion="gt"``, the
  Kaggle DSB2018 rule) or ≥ t (``criterion="ge"``); each object matches at most one other,
  chosen by optimal (Hungarian) assignment maximising the summed IoU (for t ≥ 0.5 the match is
  unique anyway, since two objects cannot both overlap one by more than half);
- TP / FP / FN per threshold; precision TP/(TP+FP), recall TP/(TP+FN), F1 2TP/(2TP+FP+FN);
  ``accuracy`` TP/(TP+FP+FN) (the DSB per-threshold score); panoptic quality
  PQ = ΣIoU(matched) / (TP + FP/2 + FN/2);
- **DSB score** of an image: the mean of ``accuracy`` over the thresholds; of a dataset: the
  mean over images. An image with no gt and no prediction scores 1;
- **SEG** (Cell Tracking Challenge): a gt object R is matched by the predicted S with
  |R∩S| > 0.5·|R| (at most one such S); its score is the Jaccard index |R∩S|/|R∪S|, 0 when
  unmatched; SEG is the mean over all gt objects;
- **counts**: predicted − true objects per image; MAE and relative error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2).tolist())
CRITERIA = ("gt", "ge")


@dataclass
class Overlaps:
    """Sparse overlaps of one frame: object ids, areas and the touching pairs.

    ``gt_ids`` (G,) / ``pred_ids`` (P,) sorted positive ids; ``gt_area`` / ``pred_area`` pixel
    counts; ``pairs`` (M, 2) int indices into those arrays; ``inter`` (M,) intersection pixels.
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    gt_area: np.ndarray
    pred_area: np.ndarray
    pairs: np.ndarray
    inter: np.ndarray

    @property
    def iou(self) -> np.ndarray:
        """IoU of each touching pair, (M,) float64."""
        union = self.gt_area[self.pairs[:, 0]] + self.pred_area[self.pairs[:, 1]] - self.inter
        return self.inter / np.maximum(union, 1)


def _check(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"label images must be 2-D and of one shape, got {gt.shape} and {pred.shape}")
    for name, a in (("ground-truth", gt), ("predicted", pred)):
        if not np.issubdtype(a.dtype, np.integer) and not np.issubdtype(a.dtype, np.bool_):
            if not np.all(np.mod(a, 1) == 0):
                raise ValueError(f"{name} label image holds non-integer values ({a.dtype})")
        if a.size and a.min() < 0:
            raise ValueError(f"{name} label image holds negative labels")
    return gt.astype(np.int64, copy=False), pred.astype(np.int64, copy=False)


def compute_overlaps(gt: np.ndarray, pred: np.ndarray) -> Overlaps:
    """Areas and pairwise intersections of two (H, W) label images (0 = background)."""
    gt, pred = _check(gt, pred)
    g_ids, g_inv = np.unique(gt.ravel(), return_inverse=True)
    p_ids, p_inv = np.unique(pred.ravel(), return_inverse=True)
    g_area = np.bincount(g_inv, minlength=len(g_ids))
    p_area = np.bincount(p_inv, minlength=len(p_ids))
    g_off = 1 if len(g_ids) and g_ids[0] == 0 else 0  # index of the first object
    p_off = 1 if len(p_ids) and p_ids[0] == 0 else 0
    both = (gt.ravel() > 0) & (pred.ravel() > 0)
    key = g_inv[both].astype(np.int64) * len(p_ids) + p_inv[both]
    keys, inter = np.unique(key, return_counts=True)
    pairs = np.stack([keys // len(p_ids) - g_off, keys % len(p_ids) - p_off], axis=1).reshape(-1, 2)
    return Overlaps(
        gt_ids=g_ids[g_off:],
        pred_ids=p_ids[p_off:],
        gt_area=g_area[g_off:],
        pred_area=p_area[p_off:],
        pairs=pairs.astype(np.int64),
        inter=inter.astype(np.int64),
    )


def match_at(ov: Overlaps, thresh: float, criterion: str = "gt") -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of pairs whose IoU passes ``thresh``.

    Returns ``(pairs (K, 2) indices into gt_ids / pred_ids, iou (K,))``.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    iou = ov.iou
    ok = iou > thresh if criterion == "gt" else iou >= thresh
    cand, cand_iou = ov.pairs[ok], iou[ok]
    if len(cand) == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    g_u, g_inv = np.unique(cand[:, 0], return_inverse=True)
    p_u, p_inv = np.unique(cand[:, 1], return_inverse=True)
    if len(g_u) == len(cand) and len(p_u) == len(cand):  # already one-to-one (always for t ≥ 0.5)
        return cand, cand_iou
    weights = np.zeros((len(g_u), len(p_u)))
    weights[g_inv, p_inv] = cand_iou
    rows, cols = linear_sum_assignment(weights, maximize=True)
    keep = weights[rows, cols] > 0
    rows, cols = rows[keep], cols[keep]
    return np.stack([g_u[rows], p_u[cols]], axis=1), weights[rows, cols]


@dataclass
class FrameResult:
    """Counts of one frame at each threshold (arrays of length len(thresholds))."""

    name: str
    n_gt: int
    n_pred: int
    thresholds: tuple[float, ...]
    tp: np.ndarray
    sum_iou: np.ndarray
    seg_sum: float
    matched_05: np.ndarray = field(repr=False)  # (K, 2) gt id, pred id matched at IoU 0.5

    @property
    def fp(self) -> np.ndarray:
        return self.n_pred - self.tp

    @property
    def fn(self) -> np.ndarray:
        return self.n_gt - self.tp

    @property
    def dsb_score(self) -> float:
        """Mean over thresholds of TP/(TP+FP+FN); 1.0 when the frame has no gt and no prediction."""
        denom = self.tp + self.fp + self.fn
        return float(np.mean(np.where(denom > 0, self.tp / np.maximum(denom, 1), 1.0)))


def seg_jaccards(ov: Overlaps) -> np.ndarray:
    """CTC SEG score of each gt object, (G,) float64: the Jaccard with the predicted object that
    covers more than half of it (at most one can), 0 when none does."""
    ok = ov.inter * 2 > ov.gt_area[ov.pairs[:, 0]]
    out = np.zeros(len(ov.gt_ids))
    out[ov.pairs[ok, 0]] = ov.iou[ok]
    return out


def seg_sum(ov: Overlaps) -> float:
    """Sum over gt objects of the CTC SEG Jaccard (matched when |R∩S| > 0.5 |R|)."""
    return float(seg_jaccards(ov).sum())


def evaluate_frame(
    gt: np.ndarray,
    pred: np.ndarray,
    name: str = "",
    thresholds: Sequence[float] = IOU_THRESHOLDS,
    criterion: str = "gt",
) -> FrameResult:
    """Match one frame's label images at every threshold (see the module docstring)."""
    ov = compute_overlaps(gt, pred)
    tp, sums = [], []
    for t in thresholds:
        _, iou = match_at(ov, float(t), criterion)
        tp.append(len(iou))
        sums.append(float(iou.sum()))
    pairs05, _ = match_at(ov, 0.5, criterion)
    return FrameResult(
        name=name,
        n_gt=len(ov.gt_ids),
        n_pred=len(ov.pred_ids),
        thresholds=tuple(float(t) for t in thresholds),
        tp=np.asarray(tp, dtype=np.int64),
        sum_iou=np.asarray(sums),
        seg_sum=seg_sum(ov),
        matched_05=np.stack([ov.gt_ids[pairs05[:, 0]], ov.pred_ids[pairs05[:, 1]]], axis=1)
        if len(pairs05)
        else np.zeros((0, 2), dtype=np.int64),
    )


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.where(den > 0, num / np.maximum(den, 1e-12), 0.0)


def count_errors(pred: Sequence[float], truth: Sequence[float]) -> dict[str, float]:
    """Per-image object counts → ``count_mae`` (mean |pred − true|; NaN for no images) and
    ``count_rel_error`` (mean |pred − true| / true over images with objects; 0 when none has)."""
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"{p.size} predicted counts vs {t.size} true counts")
    err = np.abs(p - t)
    has = t > 0
    return {
        "count_mae": float(err.mean()) if err.size else float("nan"),
        "count_rel_error": float((err[has] / t[has]).mean()) if has.any() else 0.0,
    }


def summarize_frames(frames: Sequence[FrameResult]) -> dict[str, Any]:
    """Dataset metrics: TP/FP/FN summed over frames (micro), DSB score averaged per frame.

    Keys: ``thresholds``, per-threshold lists ``precision``, ``recall``, ``f1``, ``accuracy``,
    ``pq``, ``tp``, ``fp``, ``fn``; scalars ``f1@0.5``, ``pq@0.5``, ``dsb_score``, ``seg``,
    ``count_mae``, ``count_rel_error`` (mean |pred − true| / true over frames with objects),
    ``n_frames``, ``n_gt``, ``n_pred``; ``per_frame``: name, n_gt, n_pred, f1@0.5, dsb_score.
    """
    if not frames:
        raise ValueError("no frames to summarise")
    thr = frames[0].thresholds
    tp = np.sum([f.tp for f in frames], axis=0)
    fp = np.sum([f.fp for f in frames], axis=0)
    fn = np.sum([f.fn for f in frames], axis=0)
    sum_iou = np.sum([f.sum_iou for f in frames], axis=0)
    n_gt = sum(f.n_gt for f in frames)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    pq = _ratio(sum_iou, tp + 0.5 * fp + 0.5 * fn)
    i05 = thr.index(0.5) if 0.5 in thr else 0
    per_frame = []
    for f in frames:
        denom = 2 * f.tp[i05] + f.fp[i05] + f.fn[i05]
        per_frame.append(
            {
                "name": f.name,
                "n_gt": f.n_gt,
                "n_pred": f.n_pred,
                "f1@0.5": float(2 * f.tp[i05] / denom) if denom else 1.0,
                "dsb_score": f.dsb_score,
            }
        )
    return {
        "thresholds": list(thr),
        "precision": _ratio(tp, tp + fp).tolist(),
        "recall": _ratio(tp, tp + fn).tolist(),
        "f1": f1.tolist(),
        "accuracy": _ratio(tp, tp + fp + fn).tolist(),
        "pq": pq.tolist(),
        "tp": tp.tolist(),
        "fp": fp.tolist(),
        "fn": fn.tolist(),
        "f1@0.5": float(f1[i05]),
        "pq@0.5": float(pq[i05]),
        "dsb_score": float(np.mean([f.dsb_score for f in frames])),
        "seg": float(sum(f.seg_sum for f in frames) / n_gt) if n_gt else 0.0,
        **count_errors([f.n_pred for f in frames], [f.n_gt for f in frames]),
        "n_frames": len(frames),
        "n_gt": int(n_gt),
        "n_pred": int(sum(f.n_pred for f in frames)),
        "per_frame": per_frame,
    }


def phase_metrics(
    matched: Sequence[tuple[int, int]],
    gt_phase: Sequence[int],
    pred_phase: Sequence[int],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Phase calling on matched cells: confusion matrix, per-phase P/R/F1, balanced accuracy.

    ``matched``: (gt index, pred index) pairs; ``gt_phase`` / ``pred_phase``: 0-based class of
    each gt / predicted object (indexable by those indices). Rows of ``confusion`` are true
    phases, columns predicted ones. Balanced accuracy is the mean recall over phases that occur
    among the matched cells.
    """
    k = len(class_names)
    conf = np.zeros((k, k), dtype=np.int64)
    for g, p in matched:
        conf[int(gt_phase[g]), int(pred_phase[p])] += 1
    tp = np.diag(conf).astype(float)
    support = conf.sum(axis=1).astype(float)
    called = conf.sum(axis=0).astype(float)
    prec, rec = _ratio(tp, called), _ratio(tp, support)
    f1 = _ratio(2 * prec * rec, prec + rec)
    present = support > 0
    return {
        "class_names": list(class_names),
        "confusion": conf.tolist(),
        "precision": dict(zip(class_names, prec.tolist())),
        "recall": dict(zip(class_names, rec.tolist())),
        "f1": dict(zip(class_names, f1.tolist())),
        "support": dict(zip(class_names, support.astype(int).tolist())),
        "accuracy": float(tp.sum() / conf.sum()) if conf.sum() else 0.0,
        "balanced_accuracy": float(rec[present].mean()) if present.any() else 0.0,
        "n_matched": int(conf.sum()),
    }


class CellEvaluator:
    """Accumulate frames (reset / process / evaluate), like the COCO evaluator.

    ``process(gt, pred, name, gt_phases, pred_phases)``: label images plus optional
    ``{label id: 0-based phase}`` maps; ``evaluate()`` returns ``{"cells": ..., "phases": ...}``
    (``phases`` only when phase maps were given and ``class_names`` is set).
    """

    def __init__(
        self,
        class_names: Sequence[str] = (),
        thresholds: Sequence[float] = IOU_THRESHOLDS,
        criterion: str = "gt",
    ) -> None:
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
        self.class_names, self.thresholds, self.criterion = list(class_names), tuple(thresholds), criterion
        self.reset()

    def reset(self) -> None:
        self.frames: list[FrameResult] = []
        self._pairs: list[tuple[int, int]] = []
        self._gt_phase: list[int] = []
        self._pred_phase: list[int] = []

    def process(
        self,
        gt: np.ndarray,
        pred: np.ndarray,
        name: str = "",
        gt_phases: Mapping[int, int] | None = None,
        pred_phases: Mapping[int, int] | None = None,
    ) -> FrameResult:
        res = evaluate_frame(gt, pred, name or str(len(self.frames)), self.thresholds, self.criterion)
        self.frames.append(res)
        if gt_phases is not None and pred_phases is not None:
            for g, p in res.matched_05.tolist():
                if g in gt_phases and p in pred_phases:
                    self._pairs.append((len(self._gt_phase), len(self._pred_phase)))
                    self._gt_phase.append(int(gt_phases[g]))
                    self._pred_phase.append(int(pred_phases[p]))
        return res

    def evaluate(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cells": summarize_frames(self.frames)}
        if self.class_names and self._pairs:
            out["phases"] = phase_metrics(self._pairs, self._gt_phase, self._pred_phase, self.class_names)
        return out
