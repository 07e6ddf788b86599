"""Losses for the U-Net branch.

Every loss is called as ``loss(logits, target)`` with ``logits`` (N, K, H, W) float and
``target`` (N, H, W) int64 class indices, and returns a scalar tensor. In count mode the
model has one logit (K = 1) and the target holds 0/1 (background/nucleus).

- ``weighted_ce``: cross-entropy with per-class weights, averaged as
  ``sum_i w[y_i] * nll_i / sum_i w[y_i]`` (torch's weighted mean).
- ``dice``: 1 − mean over classes of the soft Dice ``(2 Σ p t + ε) / (Σ p + Σ t + ε)``
  computed over the whole batch (softmax probabilities p, one-hot targets t).
- ``dice_ce``: ``weighted_ce + dice``.
- ``bce``: binary cross-entropy with logits (count mode); ``CLASS_WEIGHTS`` [w_bg, w_fg]
  gives ``pos_weight = w_fg / w_bg``.

Class weights come from ``UNET.LOSS.CLASS_WEIGHTS`` or, when that is empty, from the class
frequencies of the training HDF5 (``class_weights_from_counts``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode

from pcna_seg.errors import ConfigError

logger = logging.getLogger(__name__)

LOSSES = ("weighted_ce", "dice", "dice_ce", "bce")


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy over pixels with optional (K,) class weights."""

    def __init__(self, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        w = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float32))
        self.register_buffer("weight", w)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(logits.dtype)
        return F.cross_entropy(logits, target, weight=w)


class DiceLoss(nn.Module):
    """1 − mean soft Dice over classes (batch-global sums, so empty tiles do not blow up)."""

    def __init__(self, eps: float = 1.0) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k = logits.shape[1]
        if k == 1:
            p1 = torch.sigmoid(logits.float())
            probs = torch.cat([1 - p1, p1], dim=1)
            k = 2
        else:
            probs = torch.softmax(logits.float(), dim=1)
        onehot = F.one_hot(target.long(), k).permute(0, 3, 1, 2).to(probs.dtype)
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * inter + self.eps) / (denom + self.eps)
        return 1 - dice.mean()


class DiceCrossEntropy(nn.Module):
    """Weighted cross-entropy + soft Dice."""

    def __init__(self, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.ce = WeightedCrossEntropy(weights)
        self.dice = DiceLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce(logits, target) + self.dice(logits, target)


class BinaryLoss(nn.Module):
    """BCE-with-logits for a single-logit model; target (N, H, W) in {0, 1}."""

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        pw = None if pos_weight is None else torch.tensor([pos_weight], dtype=torch.float32)
        self.register_buffer("pos_weight", pw)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != 1:
            raise ValueError(f"BCE loss expects one logit per pixel, got {logits.shape[1]}")
        pw = None if self.pos_weight is None else self.pos_weight.to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits[:, 0], target.to(logits.dtype), pos_weight=pw)


def resolve_class_weights(cfg: CfgNode, counts: np.ndarray | None = None) -> np.ndarray | None:
    """(K,) float32 class weights: ``UNET.LOSS.CLASS_WEIGHTS`` if set, else from ``counts``.

    ``counts``: (K,) total pixels per class (or (N, K) per tile); when None the training file
    ``UNET.DATA.TRAIN_H5`` is read with ``class_weights_from_counts``. Returns None for a loss
    that takes no weights (plain Dice).
    """
    k = len(cfg.UNET.CLASSES)
    if cfg.UNET.LOSS.NAME == "dice":
        return None
    if len(cfg.UNET.LOSS.CLASS_WEIGHTS):
        w = np.asarray(cfg.UNET.LOSS.CLASS_WEIGHTS, dtype=np.float32)
        if w.shape != (k,):
            raise ConfigError(f"UNET.LOSS.CLASS_WEIGHTS has {w.size} values but UNET.CLASSES has {k} classes")
        if np.any(w < 0) or not np.any(w > 0):
            raise ConfigError(f"UNET.LOSS.CLASS_WEIGHTS must be >= 0 and not all 0, got {w.tolist()}")
        return w
    from pcna_seg.unet.dataset import class_weights_from_counts

    source = counts if counts is not None else cfg.UNET.DATA.TRAIN_H5
    w = np.asarray(class_weights_from_counts(source), dtype=np.float32)
    logger.info("class weights from class frequencies: %s", [round(float(x), 4) for x in w])
    return w


def build_loss(cfg: CfgNode, class_weights: Sequence[float] | None) -> nn.Module:
    """The loss named by ``UNET.LOSS.NAME`` with (K,) ``class_weights`` (or None)."""
    name = cfg.UNET.LOSS.NAME
    if name not in LOSSES:
        raise ConfigError(f"UNET.LOSS.NAME must be one of {LOSSES}, got {name!r}")
    if (cfg.UNET.MODE == "count") != (name == "bce"):
        raise ConfigError(
            f"UNET.LOSS.NAME {name!r} does not fit UNET.MODE {cfg.UNET.MODE!r}: count mode uses 'bce', "
            "the other modes 'weighted_ce', 'dice' or 'dice_ce'"
        )
    if name == "weighted_ce":
        return WeightedCrossEntropy(class_weights)
    if name == "dice":
        return DiceLoss()
    if name == "dice_ce":
        return DiceCrossEntropy(class_weights)
    pos_weight = None
    if class_weights is not None and len(class_weights) == 2 and class_weights[0] > 0:
        pos_weight = float(class_weights[1]) / float(class_weights[0])
    return BinaryLoss(pos_weight)
