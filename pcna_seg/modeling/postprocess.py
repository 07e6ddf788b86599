"""The one postprocess: model outputs at model scale → instances in the original pixels.

The model (eval mode) returns, per image, boxes (N, 4) XYXY in its input frame, scores,
1-based labels, ``class_probs`` (N, K + 1) and ``masks`` (N, 1, M, M): each instance's mask
probabilities on its own box (the mask head's M × M grid, M = 28 by default), NOT pasted into
the image. :func:`to_prediction` scales the boxes to the original image and pastes each mask
into its own box crop there (bilinear, threshold 0.5), so memory is O(sum of box areas) instead
of torchvision's O(N × H × W): a 2048² field with 2,000 nuclei needs megabytes, not tens of GB.
The paste follows torchvision's convention (mask padded by one cell, box widened to match)
so masks are the same as torchvision would paste them at that size.

Engines that return masks already pasted into the input frame (detectron2's ``pred_masks``)
pass them as ``image_masks`` (N, [1,] h, w) instead; they are cropped and rescaled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pcna_seg.data.boxes import mask_crop
from pcna_seg.errors import ConfigError
from pcna_seg.modeling.instances import Prediction


def paste_crops(
    mask_probs: torch.Tensor, boxes: torch.Tensor, image_hw: tuple[int, int], threshold: float = 0.5
) -> list[tuple[np.ndarray, int, int] | None]:
    """(N, [1,] M, M) box-frame probabilities + (N, 4) XYXY boxes → per instance (bool crop, y0, x0).

    The crop is tight around the pasted mask (None when nothing passes ``threshold``).
    """
    if mask_probs.dim() == 4:
        mask_probs = mask_probs[:, 0]
    n = len(mask_probs)
    if n == 0:
        return []
    m = mask_probs.shape[-1]
    padded = F.pad(mask_probs.float(), (1, 1, 1, 1))
    scale = (m + 2) / m
    b = boxes.float()
    half_w, half_h = (b[:, 2] - b[:, 0]) * 0.5 * scale, (b[:, 3] - b[:, 1]) * 0.5 * scale
    cx, cy = (b[:, 2] + b[:, 0]) * 0.5, (b[:, 3] + b[:, 1]) * 0.5
    ext = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1).to(torch.int64).tolist()
    H, W = int(image_hw[0]), int(image_hw[1])
    out: list[tuple[np.ndarray, int, int] | None] = []
    for i, (x0, y0, x1, y1) in enumerate(ext):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        ya, yb, xa, xb = max(y0, 0), min(y1 + 1, H), max(x0, 0), min(x1 + 1, W)
        if yb <= ya or xb <= xa:
            out.append(None)
            continue
        big = F.interpolate(padded[i][None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        window = big[ya - y0 : yb - y0, xa - x0 : xb - x0] > threshold
        found = mask_crop(window.numpy())
        out.append(None if found is None else (found[0], found[1] + ya, found[2] + xa))
    return out


def to_prediction(
    output: dict[str, torch.Tensor],
    input_hw: tuple[int, int],
    orig_hw: tuple[int, int],
    class_names: Sequence[str],
) -> Prediction:
    """One image's model output (input frame ``input_hw``) → :class:`Prediction` at ``orig_hw``."""
    labels = output["labels"].detach().cpu().numpy().astype(np.int64) - 1
    probs = output.get("class_probs")
    probs = probs.detach().float().cpu().numpy() if probs is not None else None
    scores = output["scores"].detach().float().cpu().numpy()
    boxes = output["boxes"].detach().float().cpu().clone()
    (H, W), (h, w) = orig_hw, input_hw
    if "image_masks" in output:  # already pasted in the input frame: crop, then rescale
        masks = output["image_masks"].detach().float().cpu()
        masks = masks[:, 0] if masks.dim() == 4 else masks
        crops = [mask_crop(m.numpy() > 0.5) for m in masks]
        pred = Prediction.from_crops((h, w), class_names, boxes.numpy(), scores, labels, probs, crops)
        return pred.rescaled((H, W))
    if "masks" not in output:
        raise ConfigError("The model returns no masks; prediction needs MODEL.MASK_ON True")
    boxes[:, 0::2] = (boxes[:, 0::2] * (W / w)).clamp(0, W)
    boxes[:, 1::2] = (boxes[:, 1::2] * (H / h)).clamp(0, H)
    mask_probs = output["masks"].detach().float().cpu()
    mask_probs = mask_probs[:, 0] if mask_probs.dim() == 4 else mask_probs
    crops = paste_crops(mask_probs, boxes, (H, W))
    return Prediction.from_crops(
        (H, W),
        class_names,
        boxes.numpy(),
        scores,
        labels,
        probs,
        crops,
        mask_probs.numpy().astype(np.float16),
    )
