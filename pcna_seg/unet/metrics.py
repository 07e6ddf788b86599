"""Validation metrics for the U-Net branch (torchmetrics), instances from 3-class maps, SEG.

Pixel metrics run over *all* validation pixels with constant memory:

- per-class precision–recall curves and PR-AUC (average precision) with binned thresholds
  (``UNET.EVAL.PR_THRESHOLDS`` bins in [0, 1]; torchmetrics' state is a (T, K, 2, 2)
  confusion matrix per threshold, whatever the number of pixels);
- per-class IoU (Jaccard) and Dice (F1) of the arg-max prediction, and the K×K confusion
  matrix (rows = truth, columns = prediction).

Count mode's single logit is turned into two-class probabilities ``[1 − σ, σ]`` so every mode
goes through the same multiclass metrics. Contour mode adds the SEG score (Cell Tracking
Challenge definition) on instances rebuilt from the nucleus/contour classes; count mode adds
the mean absolute error of per-tile object counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import watershed
from torchmetrics.classification import (
    MulticlassAveragePrecision,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassPrecisionRecallCurve,
)

from pcna_seg.evaluation.cell_metrics import count_errors
from pcna_seg.unet.counting import count_objects


def binned_confmat(probs: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Per-threshold one-vs-rest confusion matrices, (T, K, 2, 2) int64.

    Same result as torchmetrics' binned update (``[t, k, truth, pred]`` with pred = p ≥ t)
    but computed from a histogram in O(N·K) instead of O(N·K·T).
    ``probs``: (N, K) float in [0, 1]; ``target``: (N,) int64; ``thresholds``: (T,) increasing.
    """
    n, k = probs.shape
    t = thresholds.numel()
    # p >= thresholds[i]  <=>  i < n_le(p) where n_le(p) = #{thresholds <= p}
    n_le = torch.searchsorted(thresholds.to(probs.dtype).contiguous(), probs.contiguous(), right=True)
    onehot = torch.nn.functional.one_hot(target, k).bool()
    idx = (torch.arange(k, device=probs.device) * (t + 1)).unsqueeze(0) + n_le
    pos = torch.bincount(idx[onehot], minlength=k * (t + 1)).reshape(k, t + 1)
    neg = torch.bincount(idx[~onehot], minlength=k * (t + 1)).reshape(k, t + 1)
    # count with n_le > i, i.e. reverse cumulative sum over n_le = i+1 .. t
    tp = pos.flip(1).cumsum(1).flip(1)[:, 1:].T
    fp = neg.flip(1).cumsum(1).flip(1)[:, 1:].T
    n_pos = pos.sum(1).unsqueeze(0)
    n_neg = neg.sum(1).unsqueeze(0)
    out = torch.empty((t, k, 2, 2), dtype=torch.long, device=probs.device)
    out[:, :, 1, 1] = tp
    out[:, :, 1, 0] = n_pos - tp
    out[:, :, 0, 1] = fp
    out[:, :, 0, 0] = n_neg - fp
    return out


class _FastBinned:
    """Mixin: replaces torchmetrics' binned update by :func:`binned_confmat` (same state)."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        self.confmat += binned_confmat(preds, target, self.thresholds)


class FastPRCurve(_FastBinned, MulticlassPrecisionRecallCurve):
    """Binned multiclass PR curve; ``update`` takes (N, K) probabilities and (N,) targets."""


class FastAveragePrecision(_FastBinned, MulticlassAveragePrecision):
    """Binned multiclass average precision (PR-AUC); same inputs as :class:`FastPRCurve`."""


def logits_to_probs(logits: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) logits → (N, K', H, W) float32 probabilities (K' = 2 when K = 1)."""
    logits = logits.float()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def instances_from_contour(labels: np.ndarray, nucleus: int = 1, contour: int = 2) -> np.ndarray:
    """Instances from a 3-class map: components of ``nucleus`` grown into ``contour`` pixels.

    ``labels``: (H, W) int class map. Returns (H, W) int32 instance ids, 0 = background.
    Seeds are the 4-connected components of the nucleus class (the contour class separates
    touching nuclei); each contour pixel joins its nearest seed (watershed on the distance
    to the seeds, restricted to nucleus ∪ contour). Contour pixels with no seed stay 0.
    """
    seeds, n = ndimage.label(labels == nucleus)
    if n == 0:
        return seeds.astype(np.int32)
    fg = (labels == nucleus) | (labels == contour)
    dist = ndimage.distance_transform_edt(seeds == 0)
    return watershed(dist, markers=seeds, mask=fg).astype(np.int32)


def seg_matches(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Jaccard of each ground-truth object with its SEG match (0 when none), (n_gt,) float64.

    A predicted object matches GT object g when it covers more than half of g's pixels
    (so at most one can); the score is then |g ∩ p| / |g ∪ p|. ``gt`` and ``pred`` are
    (H, W) int instance maps with 0 = background. The cell-level evaluation's definition
    (:func:`pcna_seg.evaluation.cell_metrics.seg_jaccards`), so both branches report one SEG.
    """
    from pcna_seg.evaluation.cell_metrics import compute_overlaps, seg_jaccards

    return seg_jaccards(compute_overlaps(gt, pred))


def seg_score(gt: np.ndarray, pred: np.ndarray) -> float:
    """SEG: mean matched Jaccard over ground-truth objects (NaN when there are none)."""
    s = seg_matches(gt, pred)
    return float(s.mean()) if s.size else float("nan")


class SegmentationMetrics:
    """Accumulates validation metrics batch by batch; ``compute()`` returns a flat dict.

    ``classes``: class names (K); ``mode``: "livedead" | "contour" | "count". The values are
    over the tiles this process saw (no cross-process sync).
    """

    def __init__(self, classes: Sequence[str], mode: str, pr_thresholds: int = 101, device: str = "cpu"):
        self.classes = list(classes)
        self.mode = mode
        k = len(self.classes)
        # this process's tiles only: in multi-process training the main process validates alone,
        # so torchmetrics must not wait for the others at compute()
        kw = dict(num_classes=k, validate_args=False, sync_on_compute=False)
        self.pr_curve = FastPRCurve(thresholds=pr_thresholds, **kw).to(device)
        self.ap = FastAveragePrecision(thresholds=pr_thresholds, average=None, **kw).to(device)
        self.iou = MulticlassJaccardIndex(average=None, **kw).to(device)
        self.dice = MulticlassF1Score(average=None, **kw).to(device)
        self.confmat = MulticlassConfusionMatrix(**kw).to(device)
        self.seg_scores: list[np.ndarray] = []
        self.counts: list[tuple[int, int]] = []  # (predicted, true) objects per tile

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """``logits`` (N, K, H, W) (count mode K = 1), ``target`` (N, H, W) int64."""
        probs = logits_to_probs(logits)
        k = probs.shape[1]
        flat_p = probs.permute(0, 2, 3, 1).reshape(-1, k)
        flat_t = target.reshape(-1).long()
        self.pr_curve.update(flat_p, flat_t)
        self.ap.update(flat_p, flat_t)
        pred = probs.argmax(1)
        self.iou.update(pred, target)
        self.dice.update(pred, target)
        self.confmat.update(pred, target)
        if self.mode == "contour":
            for p, t in zip(pred.cpu().numpy(), target.cpu().numpy()):
                self.seg_scores.append(seg_matches(instances_from_contour(t), instances_from_contour(p)))
        elif self.mode == "count":
            for p, t in zip(pred.cpu().numpy(), target.cpu().numpy()):
                self.counts.append((count_objects(p > 0), count_objects(t > 0)))

    def compute(self) -> dict[str, float]:
        """Flat dict: ``pr_auc/<class>``, ``pr_auc_mean`` (foreground classes), ``iou/…``, ``dice/…``,
        ``seg`` (contour mode), ``count_mae`` (count mode)."""
        out: dict[str, float] = {}
        ap = self.ap.compute().cpu().numpy()
        iou = self.iou.compute().cpu().numpy()
        dice = self.dice.compute().cpu().numpy()
        for i, name in enumerate(self.classes):
            out[f"pr_auc/{name}"] = float(ap[i])
            out[f"iou/{name}"] = float(iou[i])
            out[f"dice/{name}"] = float(dice[i])
        out["pr_auc_mean"] = float(np.nanmean(ap[1:])) if len(ap) > 1 else float(ap[0])
        out["iou_mean"] = float(np.nanmean(iou[1:])) if len(iou) > 1 else float(iou[0])
        if self.mode == "contour":
            allm = np.concatenate(self.seg_scores) if self.seg_scores else np.zeros(0)
            out["seg"] = float(allm.mean()) if allm.size else float("nan")
        if self.mode == "count":
            pred, true = zip(*self.counts) if self.counts else ((), ())
            out["count_mae"] = count_errors(pred, true)["count_mae"]  # the cell metrics' definition
        return out

    def pr_curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Class name → (precision, recall), each (T + 1,) float, from the binned curve."""
        precision, recall, _ = self.pr_curve.compute()
        return {
            name: (precision[i].cpu().numpy(), recall[i].cpu().numpy()) for i, name in enumerate(self.classes)
        }

    def confusion(self) -> np.ndarray:
        """(K, K) int64 confusion matrix, rows = truth, columns = prediction."""
        return self.confmat.compute().cpu().numpy()
