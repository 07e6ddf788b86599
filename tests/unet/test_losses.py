"""Weighted CE, Dice, Dice+CE, BCE; class weights from config or counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pcna_seg.config import load_config
from pcna_seg.errors import ConfigError
from pcna_seg.unet.losses import DiceLoss, WeightedCrossEntropy, build_loss, resolve_class_weights


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 8, 8, generator=g), torch.randint(0, 3, (2, 8, 8), generator=g)


def test_weighted_ce_is_weighted_mean() -> None:
    logits, target = _data()
    w = torch.tensor([0.01, 1.0, 0.95])
    nll = -torch.log_softmax(logits, 1).gather(1, target[:, None])[:, 0]
    expected = (w[target] * nll).sum() / w[target].sum()
    assert WeightedCrossEntropy(w.tolist())(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_dice_perfect_and_bad() -> None:
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 1
    good = F.one_hot(target, 2).permute(0, 3, 1, 2).float() * 30
    assert DiceLoss()(good, target).item() == pytest.approx(0.0, abs=1e-4)
    assert DiceLoss()(-good, target).item() > 0.9


@pytest.mark.parametrize("name", ["weighted_ce", "dice", "dice_ce"])
def test_build_losses_backprop(name: str) -> None:
    cfg = load_config(opts=["UNET.LOSS.NAME", name, "UNET.LOSS.CLASS_WEIGHTS", "[0.01, 1.0, 0.95]"])
    logits, target = _data()
    logits.requires_grad_(True)
    loss = build_loss(cfg, resolve_class_weights(cfg))(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None


def test_bce_count_mode() -> None:
    cfg = load_config(opts=["UNET.MODE", "count", "UNET.LOSS.NAME", "bce", "UNET.CLASSES",
                            "['background','nucleus']", "UNET.LOSS.CLASS_WEIGHTS", "[1.0, 3.0]"])  # fmt: skip
    loss = build_loss(cfg, resolve_class_weights(cfg))
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 8, 8) > 0.5).long()
    ref = F.binary_cross_entropy_with_logits(logits[:, 0], target.float(), pos_weight=torch.tensor([3.0]))
    assert loss(logits, target).item() == pytest.approx(ref.item(), rel=1e-6)


def test_weights_from_counts_and_errors() -> None:
    cfg = load_config()
    counts = np.array([[900, 90, 10], [800, 150, 50]])
    w = resolve_class_weights(cfg, counts)
    assert w.shape == (3,) and w[0] < w[1] < w[2]
    bad = load_config(opts=["UNET.LOSS.CLASS_WEIGHTS", "[1.0, 2.0]"])
    with pytest.raises(ConfigError, match="CLASS_WEIGHTS"):
        resolve_class_weights(bad)
    with pytest.raises(ConfigError, match="count mode"):
        build_loss(load_config(opts=["UNET.LOSS.NAME", "bce"]), None)
