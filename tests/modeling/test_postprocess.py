"""The one postprocess: box-frame masks pasted into crops equal torchvision's full-image paste."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from pcna_seg.modeling.instances import Prediction
from pcna_seg.modeling.postprocess import paste_crops, to_prediction


def test_crops_equal_torchvision_paste():
    g = torch.Generator().manual_seed(0)
    n, h, w = 40, 97, 131
    probs = torch.rand((n, 1, 28, 28), generator=g)
    xy = torch.rand((n, 2), generator=g) * torch.tensor([w - 10.0, h - 10.0]) - 5  # some cross the border
    wh = 3 + torch.rand((n, 2), generator=g) * 30
    boxes = torch.cat([xy, xy + wh], dim=1)
    full = paste_masks_in_image(probs, boxes, (h, w), padding=1)[:, 0] > 0.5
    crops = paste_crops(probs, boxes, (h, w))
    for i in range(n):
        mine = np.zeros((h, w), bool)
        if crops[i] is not None:
            c, y0, x0 = crops[i]
            mine[y0 : y0 + c.shape[0], x0 : x0 + c.shape[1]] = c
        np.testing.assert_array_equal(mine, full[i].numpy())


def test_memory_scales_with_box_area_not_image_area():
    n = 2000
    probs = torch.ones((n, 1, 28, 28))
    xy = torch.rand((n, 2)) * 2000
    boxes = torch.cat([xy, xy + 12], dim=1)
    out = {
        "boxes": boxes,
        "labels": torch.ones(n, dtype=torch.int64),
        "scores": torch.rand(n),
        "masks": probs,
    }
    pred = to_prediction(out, (2048, 2048), (2048, 2048), ["nucleus"])
    assert isinstance(pred, Prediction) and len(pred) == n
    assert sum(c.size for c in pred.mask_crops) < n * 20 * 20  # a few hundred bytes each, not 4 MB


def test_aligned_paste_reproduces_detectron2_pasted_masks_exactly() -> None:
    """detectron2's own pasted masks for its fixture detections (tests/fixtures/d2, written with
    detectron2 by benchmarks/compare_d2.py) equal the "aligned" paste of the same probabilities
    and boxes, pixel for pixel; the torchvision rule differs at the edges."""
    from pathlib import Path

    from pcna_seg.config import load_config
    from pcna_seg.modeling.build import mask_paste_for

    fix = Path(__file__).resolve().parents[1] / "fixtures" / "d2"
    exp, packed = np.load(fix / "r18n_expected.npz"), np.load(fix / "r18n_pasted.npz")
    n, h, w = packed["shape"].tolist()
    ref = np.unpackbits(packed["packed"], axis=-1, count=w).astype(bool)
    probs, boxes = torch.from_numpy(exp["mask_probs"]), torch.from_numpy(exp["boxes"])
    for mode, same in (("aligned", True), ("torchvision", False)):
        dense = np.zeros((n, h, w), bool)
        for i, crop in enumerate(paste_crops(probs, boxes, (h, w), mode=mode)):
            if crop is not None:
                m, y0, x0 = crop
                dense[i, y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]] = m
        assert np.array_equal(dense, ref) is same, mode
    d2_cfg = load_config(
        Path(__file__).resolve().parents[2] / "configs/Base-MaskRCNN-FPN-detectron2-weights.yaml"
    )
    assert mask_paste_for(d2_cfg) == "aligned" and mask_paste_for(load_config()) == "torchvision"


def test_the_paste_rule_travels_with_the_prediction() -> None:
    probs = torch.zeros(1, 1, 28, 28)
    probs[..., 4:24, 4:24] = 1.0
    out = {"boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0]]), "scores": torch.tensor([0.9]),
           "labels": torch.tensor([1]), "masks": probs}  # fmt: skip
    pred = to_prediction(out, (32, 32), (32, 32), ["nucleus"], mask_paste="aligned")
    assert pred.mask_paste == "aligned" and pred.rescaled((64, 64)).mask_paste == "aligned"
    assert pred.select([0]).mask_paste == "aligned"
