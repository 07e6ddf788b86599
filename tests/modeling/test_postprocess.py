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
