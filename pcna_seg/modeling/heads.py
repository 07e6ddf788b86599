"""RoI heads with per-class probabilities, and the box/mask head builders.

:class:`PcnaRoIHeads` subclasses torchvision's ``RoIHeads`` and overrides only the detection
post-processing, so every detection also carries ``class_probs``: the full softmax row of the
proposal it came from, (N, K + 1) float with the background in column 0.

Post-processing modes (``MODEL.ROI_HEADS.ONE_CLASS_PER_BOX``):

- True (default): each proposal yields at most one detection, of its most probable foreground
  class; so ``labels == argmax(class_probs[:, 1:]) + 1`` always holds. Cell-cycle phases are
  mutually exclusive, so one nucleus should not come out twice with two phases.
- False: torchvision/detectron2 behaviour, one candidate per (proposal, foreground class) above
  the score threshold; ``class_probs`` is still the proposal's full row.

Either way: score threshold, removal of empty boxes, NMS, top ``detections_per_img``. NMS is
per class (COCO/detectron2 practice, what AP rewards) unless ``MODEL.ROI_HEADS.NMS_CLASS_AGNOSTIC``
is set: then two proposals on one nucleus with different top phases cannot both survive, which
is what phase calling and counting want (``tools/predict_net.py`` sets it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops

from pcna_seg.errors import ConfigError
from pcna_seg.modeling.d2_layers import PoolerRoIAlign

#: parameter-name prefixes of the class-specific layers (re-initialised when K changes)
CLASS_SPECIFIC_PREFIXES = (
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_predictor.mask_fcn_logits.",
)


class PcnaRoIHeads(RoIHeads):
    """torchvision ``RoIHeads`` whose eval results also hold ``"class_probs"`` (N, K + 1)."""

    def __init__(
        self, *args, one_class_per_box: bool = True, class_agnostic_nms: bool = False, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.one_class_per_box = bool(one_class_per_box)
        self.class_agnostic_nms = bool(class_agnostic_nms)
        self._last_class_probs: list[Tensor] | None = None

    def postprocess_detections(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per image: boxes (N, 4), scores (N,), labels (N,) int64; stores class probs (N, K + 1)."""
        num_classes = class_logits.shape[-1]
        per_image = [p.shape[0] for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals)  # (R, K + 1, 4)
        if pred_boxes.dim() == 2:  # no proposal in the whole batch: torchvision skips the reshape
            pred_boxes = pred_boxes.reshape(0, num_classes, 4)
        probs = F.softmax(class_logits, -1)
        out_boxes, out_scores, out_labels, out_probs = [], [], [], []
        for boxes, prob, shape in zip(
            pred_boxes.split(per_image, 0), probs.split(per_image, 0), image_shapes
        ):
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            n = prob.shape[0]
            if self.one_class_per_box:
                src = torch.arange(n, device=prob.device)
                if num_classes > 1:
                    scores, fg = prob[:, 1:].max(dim=1)
                    labels = fg + 1
                else:  # degenerate: background only
                    scores = prob.new_zeros(n)
                    labels = torch.zeros(n, dtype=torch.int64, device=prob.device)
                cand = boxes[src, labels]
            else:
                labels = torch.arange(1, num_classes, device=prob.device).expand(n, -1).reshape(-1)
                src = torch.arange(n, device=prob.device).repeat_interleave(num_classes - 1)
                scores = prob[:, 1:].reshape(-1)
                cand = boxes[:, 1:].reshape(-1, 4)
            keep = torch.where(scores > self.score_thresh)[0]
            cand, scores, labels, src = cand[keep], scores[keep], labels[keep], src[keep]
            keep = box_ops.remove_small_boxes(cand, min_size=1e-2)
            cand, scores, labels, src = cand[keep], scores[keep], labels[keep], src[keep]
            if self.class_agnostic_nms:  # phases exclude each other: one nucleus, one detection
                keep = box_ops.nms(cand, scores, self.nms_thresh)[: self.detections_per_img]
            else:
                keep = box_ops.batched_nms(cand, scores, labels, self.nms_thresh)[: self.detections_per_img]
            out_boxes.append(cand[keep])
            out_scores.append(scores[keep])
            out_labels.append(labels[keep])
            out_probs.append(prob[src[keep]])
        self._last_class_probs = out_probs
        return out_boxes, out_scores, out_labels

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """As torchvision's; in eval each result dict gains ``"class_probs"``."""
        self._last_class_probs = None
        result, losses = super().forward(features, proposals, image_shapes, targets)
        if not self.training and self._last_class_probs is not None:
            for r, p in zip(result, self._last_class_probs):
                r["class_probs"] = p
        self._last_class_probs = None
        return result, losses


def build_box_head(
    in_channels: int,
    featmap_names: list[str],
    resolution: int,
    fc_dim: int,
    num_classes: int,
    sampling_ratio: int = 2,
    aligned: bool = False,
) -> tuple[MultiScaleRoIAlign, nn.Module, nn.Module]:
    """Box pooler, two-layer MLP head (``fc6``/``fc7``) and predictor for K foreground classes
    (the predictor has K + 1 outputs, background at 0), pooling the maps ``featmap_names``
    with RoIAlign (``aligned``: half-pixel-corrected ``ROIAlignV2``)."""
    return (
        PoolerRoIAlign(list(featmap_names), resolution, sampling_ratio, aligned),
        TwoMLPHead(in_channels * resolution**2, fc_dim),
        FastRCNNPredictor(fc_dim, num_classes + 1),
    )


def build_mask_head(
    in_channels: int,
    featmap_names: list[str],
    resolution: int,
    conv_dim: int,
    num_conv: int,
    num_classes: int,
    sampling_ratio: int = 2,
    aligned: bool = False,
) -> tuple[MultiScaleRoIAlign, nn.Module, nn.Module]:
    """Mask pooler, ``num_conv`` 3x3 conv layers of width ``conv_dim``, and the deconv + 1x1
    predictor with K + 1 outputs."""
    if num_conv < 1 or conv_dim < 1:
        raise ConfigError("MODEL.ROI_MASK_HEAD.NUM_CONV and CONV_DIM must be >= 1")
    return (
        PoolerRoIAlign(list(featmap_names), resolution, sampling_ratio, aligned),
        MaskRCNNHeads(in_channels, [conv_dim] * num_conv, 1),
        MaskRCNNPredictor(conv_dim, conv_dim, num_classes + 1),
    )
