"""The one postprocess: model outputs at model scale → instances in the original pixels.

The model (eval mode) returns, per image, boxes (N, 4) XYXY in its input frame, scores,
1-based labels, ``class_probs`` (N, K + 1) and ``masks`` (N, 1, M, M): each instance's mask
probabilities on its own box (the mask head's M × M grid, M = 28 by default), NOT pasted into
the image. :func:`to_prediction` scales the boxes to the original image and pastes each mask
into its own box crop there (bilinear, threshold 0.5), so memory is O(sum of box areas) instead
of torchvision's O(N × H × W): a 2048² field with 2,000 nuclei needs megabytes, not tens of GB.
The paste follows torchvision's convention (mask padded by one cell, box widened to match)
so masks are the same as torchvision would paste them at that size. ``mask_paste="aligned"``
pastes as detectron2 does instead (each pixel centre mapped into the box, bilinear
``grid_sample``, kept where ≥ 0.5): the inverse of aligned RoIAlign, used by models whose mask
pooler is ``ROIAlignV2`` (detectron2 weights), so their masks are the ones detectron2 gives.

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

MASK_PASTES = ("torchvision", "aligned")


def mask_paste_of(model: object) -> str:
    """The paste rule a model's masks need (its ``mask_paste`` attribute; torchvision's by default)."""
    return str(getattr(model, "mask_paste", "torchvision"))


def paste_crops(
    mask_probs: torch.Tensor,
    boxes: torch.Tensor,
    image_hw: tuple[int, int],
    threshold: float = 0.5,
    mode: str = "torchvision",
) -> list[tuple[np.ndarray, int, int] | None]:
    """(N, [1,] M, M) box-frame probabilities + (N, 4) XYXY boxes → per instance (bool crop, y0, x0).

    The crop is tight around the pasted mask (None when nothing passes ``threshold``).
    ``mode``: "torchvision" (> threshold) or "aligned" (detectron2's rule, ≥ threshold).
    """
    if mode not in MASK_PASTES:
        raise ValueError(f"mask paste must be one of {MASK_PASTES}, got {mode!r}")
    if mask_probs.dim() == 4:
        mask_probs = mask_probs[:, 0]
    n = len(mask_probs)
    if n == 0:
        return []
    if mode == "aligned":
        return [
            _paste_aligned(m, box, image_hw, threshold) for m, box in zip(mask_probs.float(), boxes.float())
        ]
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


def _paste_aligned(
    prob: torch.Tensor, box: torch.Tensor, image_hw: tuple[int, int], threshold: float
) -> tuple[np.ndarray, int, int] | None:
    """One (M, M) mask into its XYXY box: pixel centre (x + 0.5, y + 0.5) → box coordinates in
    [-1, 1], bilinear ``grid_sample`` (zero outside the M × M grid), ≥ ``threshold``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    H, W = int(image_hw[0]), int(image_hw[1])
    xa, xb = max(int(np.floor(x0)) - 1, 0), min(int(np.ceil(x1)) + 1, W)
    ya, yb = max(int(np.floor(y0)) - 1, 0), min(int(np.ceil(y1)) + 1, H)
    if xb <= xa or yb <= ya:
        return None
    gx = (torch.arange(xa, xb, dtype=torch.float32) + 0.5 - x0) / max(x1 - x0, 1e-6) * 2 - 1
    gy = (torch.arange(ya, yb, dtype=torch.float32) + 0.5 - y0) / max(y1 - y0, 1e-6) * 2 - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
    big = F.grid_sample(prob[None, None], grid, align_corners=False)[0, 0]
    found = mask_crop((big >= threshold).numpy())
    return None if found is None else (found[0], found[1] + ya, found[2] + xa)


def to_prediction(
    output: dict[str, torch.Tensor],
    input_hw: tuple[int, int],
    orig_hw: tuple[int, int],
    class_names: Sequence[str],
    mask_paste: str = "torchvision",
) -> Prediction:
    """One image's model output (input frame ``input_hw``) → :class:`Prediction` at ``orig_hw``.

    ``mask_paste``: how box-frame masks go into the image (:func:`paste_crops`; the model's
    rule, :func:`mask_paste_of`)."""
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
    crops = paste_crops(mask_probs, boxes, (H, W), mode=mask_paste)
    pred = Prediction.from_crops(
        (H, W),
        class_names,
        boxes.numpy(),
        scores,
        labels,
        probs,
        crops,
        mask_probs.numpy().astype(np.float16),
    )
    return pred.with_mask_paste(mask_paste)
