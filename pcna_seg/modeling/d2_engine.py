"""``MODEL.ENGINE: detectron2``: detectron2's Mask R-CNN behind the project's model interface.

Used only where ``import detectron2`` works; nothing here imports detectron2 at module import
time and nothing is registered into detectron2 until :func:`build_d2_model` (or
:func:`register_datasets`) is called.

:func:`build_d2_model` translates the project config into a detectron2 config
(:func:`to_d2_config`: the same key names; the FPN levels named ``p2..p6``; IoU thresholds with
their labels; a registered ResNet-FPN builder that also allows FPN inputs without ``res5``)
and builds ``PcnaD2RCNN``, a ``GeneralizedRCNN`` subclass registered by the project whose
calling convention is the torchvision engine's, so the project's trainer, mapper,
checkpointer, evaluator and predictor use it unchanged:

- train: ``model(images, targets)`` with ``images`` a list of (C, H, W) float tensors from the
  project's input pipeline ([0, 1] channels at model scale; normalised by ``MODEL.PIXEL_MEAN``/
  ``PIXEL_STD`` inside the model, as in the torchvision engine) and ``targets`` dicts of
  ``boxes`` (N, 4) XYXY, ``labels`` (N,) int64 1-based, ``masks`` (N, H, W) uint8 → detectron2
  ``Instances`` (``gt_boxes``, ``gt_classes`` 0-based, ``gt_masks`` BitMasks). Returns the
  losses under the torchvision engine's names (``loss_classifier``, ``loss_box_reg``,
  ``loss_mask``, ``loss_objectness``, ``loss_rpn_box_reg``), so ``metrics.json`` has the same keys;
- eval: ``model(images)`` → per image ``{"boxes", "labels" (1-based), "scores", "masks"
  (N, 1, M, M) probabilities on each box, "class_probs" (N, K + 1) background first}``.

Per-class probabilities come from ``PcnaD2ROIHeads`` (a registered ``StandardROIHeads``
subclass) whose box predictor ``ProbOutputLayers`` subclasses ``FastRCNNOutputLayers`` and
keeps the softmax row of each detection; it also applies ``MODEL.ROI_HEADS.ONE_CLASS_PER_BOX``
and ``NMS_CLASS_AGNOSTIC`` as the torchvision engine does. detectron2's files are never patched.

State-dict names are detectron2's, so detectron2 checkpoints (``.pkl`` / ``.pth``) load
directly (:func:`pcna_seg.modeling.weights.load_weights`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from pcna_seg.errors import ConfigError

logger = logging.getLogger(__name__)

#: detectron2 loss name → torchvision engine loss name
LOSS_NAMES = {
    "loss_cls": "loss_classifier",
    "loss_box_reg": "loss_box_reg",
    "loss_mask": "loss_mask",
    "loss_rpn_cls": "loss_objectness",
    "loss_rpn_loc": "loss_rpn_box_reg",
}
#: detectron2 parameter prefixes of the class-specific layers (re-initialised when K changes)
D2_CLASS_SPECIFIC_PREFIXES = (
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_head.predictor.",
)
D2_STEM_KEY = "backbone.bottom_up.stem.conv1.weight"
_CLASSES: dict[str, type] = {}


def _iou(values: Any) -> tuple[list[float], list[int]]:
    vals = sorted(float(v) for v in values)
    return (vals, [0, 1]) if len(vals) == 1 else ([vals[0], vals[-1]], [0, -1, 1])


def to_d2_config(cfg: Any) -> Any:
    """The detectron2 ``CfgNode`` for project config ``cfg`` (same model, detectron2 names)."""
    from detectron2.config import get_cfg

    from pcna_seg.modeling.build import check_names, resolve_device

    check_names(cfg)
    M = cfg.MODEL
    if M.ANCHOR_GENERATOR.NAME != "DefaultAnchorGenerator":
        raise ConfigError(
            "MODEL.ENGINE detectron2 builds detectron2's anchors only; set MODEL.ANCHOR_GENERATOR.NAME "
            "DefaultAnchorGenerator (TorchvisionAnchorGenerator is the torchvision engine's rounding)"
        )
    depth = int(M.RESNETS.DEPTH)
    stem, res2 = int(M.RESNETS.STEM_OUT_CHANNELS) or 64, int(M.RESNETS.RES2_OUT_CHANNELS)
    res2 = res2 or (64 if depth in (18, 34) else 256)
    if depth in (18, 34) and (stem, res2) != (64, 64):
        raise ConfigError(
            "MODEL.ENGINE detectron2 builds R18/34 with 64-wide stem and res2 only "
            "(MODEL.RESNETS.STEM_OUT_CHANNELS / RES2_OUT_CHANNELS 0 or 64)"
        )
    d = get_cfg()
    m = d.MODEL
    m.META_ARCHITECTURE, m.DEVICE, m.MASK_ON, m.WEIGHTS = (
        "PcnaD2RCNN",
        str(resolve_device(cfg)),
        M.MASK_ON,
        "",
    )
    m.PIXEL_MEAN, m.PIXEL_STD = [float(v) for v in M.PIXEL_MEAN], [float(v) for v in M.PIXEL_STD]
    # build_resnet_fpn_backbone (validated by check_names) → the same builder with the pool level
    # on the last FPN input (see _define_classes)
    m.BACKBONE.NAME, m.BACKBONE.FREEZE_AT = "build_pcna_resnet_fpn_backbone", int(M.BACKBONE.FREEZE_AT)
    r = m.RESNETS
    r.DEPTH, r.NORM, r.STRIDE_IN_1X1 = depth, M.RESNETS.NORM, bool(M.RESNETS.STRIDE_IN_1X1)
    r.OUT_FEATURES, r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS = list(M.RESNETS.OUT_FEATURES), stem, res2
    feats = list(M.FPN.IN_FEATURES)
    m.FPN.IN_FEATURES, m.FPN.OUT_CHANNELS = feats, int(M.FPN.OUT_CHANNELS)
    levels = [f"p{f[3:]}" for f in feats]
    a = m.ANCHOR_GENERATOR
    a.SIZES = [list(s) if isinstance(s, (list, tuple)) else [s] for s in M.ANCHOR_GENERATOR.SIZES]
    a.ASPECT_RATIOS = [
        list(x) if isinstance(x, (list, tuple)) else [x] for x in M.ANCHOR_GENERATOR.ASPECT_RATIOS
    ]
    a.OFFSET = float(M.ANCHOR_GENERATOR.OFFSET)
    p = m.RPN
    p.IN_FEATURES = [*levels, f"p{int(levels[-1][1:]) + 1}"]
    p.BATCH_SIZE_PER_IMAGE, p.POSITIVE_FRACTION = (
        int(M.RPN.BATCH_SIZE_PER_IMAGE),
        float(M.RPN.POSITIVE_FRACTION),
    )
    p.NMS_THRESH = float(M.RPN.NMS_THRESH)
    p.PRE_NMS_TOPK_TRAIN, p.PRE_NMS_TOPK_TEST = int(M.RPN.PRE_NMS_TOPK_TRAIN), int(M.RPN.PRE_NMS_TOPK_TEST)
    p.POST_NMS_TOPK_TRAIN, p.POST_NMS_TOPK_TEST = (
        int(M.RPN.POST_NMS_TOPK_TRAIN),
        int(M.RPN.POST_NMS_TOPK_TEST),
    )
    p.IOU_THRESHOLDS, p.IOU_LABELS = _iou(M.RPN.IOU_THRESHOLDS)
    h, H = m.ROI_HEADS, M.ROI_HEADS
    h.NAME, h.IN_FEATURES, h.NUM_CLASSES = "PcnaD2ROIHeads", levels, int(H.NUM_CLASSES)
    h.BATCH_SIZE_PER_IMAGE, h.POSITIVE_FRACTION = int(H.BATCH_SIZE_PER_IMAGE), float(H.POSITIVE_FRACTION)
    h.IOU_THRESHOLDS, h.IOU_LABELS = _iou(H.IOU_THRESHOLDS)
    h.SCORE_THRESH_TEST, h.NMS_THRESH_TEST = float(H.SCORE_THRESH_TEST), float(H.NMS_THRESH_TEST)
    d.TEST.DETECTIONS_PER_IMAGE = int(cfg.TEST.DETECTIONS_PER_IMAGE)
    b, B = m.ROI_BOX_HEAD, M.ROI_BOX_HEAD
    b.NAME, b.NUM_FC, b.NUM_CONV, b.FC_DIM = B.NAME, 2, 0, int(B.FC_DIM)
    b.POOLER_RESOLUTION, b.POOLER_TYPE = int(B.POOLER_RESOLUTION), B.POOLER_TYPE
    b.POOLER_SAMPLING_RATIO = int(B.POOLER_SAMPLING_RATIO)
    k, K = m.ROI_MASK_HEAD, M.ROI_MASK_HEAD
    k.NAME, k.NUM_CONV, k.CONV_DIM = K.NAME, int(K.NUM_CONV), int(K.CONV_DIM)
    k.POOLER_RESOLUTION, k.POOLER_TYPE = int(K.POOLER_RESOLUTION), K.POOLER_TYPE
    k.POOLER_SAMPLING_RATIO = int(K.POOLER_SAMPLING_RATIO)
    return d


def _define_classes() -> dict[str, type]:
    """Define and register (once) the project's detectron2 classes; imports detectron2."""
    if _CLASSES:
        return _CLASSES
    from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, ROI_HEADS_REGISTRY, GeneralizedRCNN
    from detectron2.modeling.backbone import FPN, build_resnet_backbone
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool
    from detectron2.modeling.roi_heads import StandardROIHeads
    from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils import events
    from torchvision.ops import boxes as box_ops

    class ProbOutputLayers(FastRCNNOutputLayers):
        """FastRCNNOutputLayers whose detections carry ``class_probs`` (N, K + 1), background first."""

        one_class_per_box = True
        class_agnostic_nms = False

        def inference(self, predictions, proposals):  # noqa: D102
            boxes = self.predict_boxes(predictions, proposals)
            probs = self.predict_probs(predictions, proposals)
            out = [self._one(b, p, x.image_size) for b, p, x in zip(boxes, probs, proposals)]
            return [o[0] for o in out], [o[1] for o in out]

        def _one(self, boxes: Tensor, prob: Tensor, hw: tuple[int, int]):
            n, k = prob.shape[0], prob.shape[1] - 1  # detectron2: background in the last column
            boxes = Boxes(boxes.reshape(-1, 4))
            boxes.clip(hw)
            boxes = boxes.tensor.view(n, -1, 4)
            if boxes.shape[1] == 1:  # class-agnostic regression
                boxes = boxes.expand(n, k, 4)
            if self.one_class_per_box:
                scores, labels = prob[:, :k].max(dim=1)
                src = torch.arange(n, device=prob.device)
                cand = boxes[src, labels]
            else:
                labels = torch.arange(k, device=prob.device).repeat(n)
                src = torch.arange(n, device=prob.device).repeat_interleave(k)
                scores, cand = prob[:, :k].reshape(-1), boxes.reshape(-1, 4)
            keep = (
                (scores > self.test_score_thresh) & torch.isfinite(cand).all(dim=1) & torch.isfinite(scores)
            )
            cand, scores, labels, src = cand[keep], scores[keep], labels[keep], src[keep]
            if self.class_agnostic_nms:
                keep = box_ops.nms(cand, scores, self.test_nms_thresh)
            else:
                keep = box_ops.batched_nms(cand, scores, labels, self.test_nms_thresh)
            keep = keep[: self.test_topk_per_image]
            row = prob[src[keep]]
            result = Instances(hw)
            result.pred_boxes, result.scores, result.pred_classes = (
                Boxes(cand[keep]),
                scores[keep],
                labels[keep],
            )
            result.class_probs = torch.cat([row[:, k:], row[:, :k]], dim=1)
            return result, src[keep]

    @BACKBONE_REGISTRY.register()
    def build_pcna_resnet_fpn_backbone(cfg, input_shape):
        """detectron2's ResNet-FPN whose max-pool level follows the last FPN input (P5 for
        res2..res4; detectron2's own builder always pools P5, so it needs res5)."""
        top = LastLevelMaxPool()
        top.in_feature = f"p{cfg.MODEL.FPN.IN_FEATURES[-1][3:]}"
        return FPN(
            bottom_up=build_resnet_backbone(cfg, input_shape),
            in_features=cfg.MODEL.FPN.IN_FEATURES,
            out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
            norm=cfg.MODEL.FPN.NORM,
            top_block=top,
            fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        )

    @ROI_HEADS_REGISTRY.register()
    class PcnaD2ROIHeads(StandardROIHeads):
        """StandardROIHeads with :class:`ProbOutputLayers` as the box predictor."""

        @classmethod
        def _init_box_head(cls, cfg, input_shape):  # noqa: D102
            ret = super()._init_box_head(cfg, input_shape)
            ret["box_predictor"] = ProbOutputLayers(cfg, ret["box_head"].output_shape)
            return ret

    @META_ARCH_REGISTRY.register()
    class PcnaD2RCNN(GeneralizedRCNN):
        """GeneralizedRCNN called like the torchvision engine (see the module docstring)."""

        engine = "detectron2"

        def forward(self, images, targets=None):  # noqa: D102
            if images and isinstance(images[0], dict):  # detectron2's own convention still works
                return super().forward(images)
            batched = []
            for i, img in enumerate(images):
                item: dict[str, Any] = {"image": img}
                if targets is not None:
                    t = targets[i]
                    inst = Instances(tuple(img.shape[-2:]))
                    inst.gt_boxes = Boxes(t["boxes"].float())
                    inst.gt_classes = t["labels"].long() - 1
                    if "masks" in t:
                        inst.gt_masks = BitMasks(t["masks"].bool())
                    item["instances"] = inst
                batched.append(item)
            if self.training:
                if targets is None:
                    raise ValueError("training needs targets")
                # detectron2's heads log scalars (anchor counts, classifier accuracy) into an event
                # storage; they are kept for the project's trainer, which writes them to metrics.json
                with events.EventStorage(0) as storage:
                    losses = super().forward(batched)
                self.last_scalars = {k: float(v) for k, (v, _) in storage.latest().items()}
                return {LOSS_NAMES.get(k, k): v for k, v in losses.items()}
            return [_to_output(x) for x in self.inference(batched, do_postprocess=False)]

    def _to_output(inst) -> dict[str, Tensor]:
        out = {
            "boxes": inst.pred_boxes.tensor,
            "labels": inst.pred_classes + 1,
            "scores": inst.scores,
            "class_probs": inst.class_probs,
        }
        if inst.has("pred_masks"):
            out["masks"] = inst.pred_masks
        return out

    _CLASSES.update(ProbOutputLayers=ProbOutputLayers, PcnaD2ROIHeads=PcnaD2ROIHeads, PcnaD2RCNN=PcnaD2RCNN)
    return _CLASSES


def build_d2_model(cfg: Any) -> nn.Module:
    """detectron2 Mask R-CNN for ``cfg`` (random weights) on ``resolve_device(cfg)``.

    Also registers ``DATASETS.TRAIN``/``TEST`` into detectron2's catalogs (lazily, by name).
    Attributes as the torchvision engine's model: ``cfg_num_classes``, ``class_names``,
    ``input_channels``, plus ``engine = "detectron2"``.
    """
    from detectron2.modeling import build_model

    _define_classes()
    model = build_model(to_d2_config(cfg))
    box = model.roi_heads.box_predictor
    box.one_class_per_box = bool(cfg.MODEL.ROI_HEADS.ONE_CLASS_PER_BOX)
    box.class_agnostic_nms = bool(cfg.MODEL.ROI_HEADS.NMS_CLASS_AGNOSTIC)
    model.cfg_num_classes = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    model.class_names = None
    model.input_channels = list(cfg.INPUT.CHANNELS)
    model.mask_paste = "aligned"  # detectron2 pastes its masks this way
    register_datasets([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST], cfg.DATASETS.ROOT or None)
    logger.info(
        "Built detectron2 Mask R-CNN R%d-FPN (%d classes) on %s",
        int(cfg.MODEL.RESNETS.DEPTH),
        model.cfg_num_classes,
        model.device,
    )
    return model


def register_datasets(names: list[str], root: str | None = None) -> list[str]:
    """Register project datasets ``names`` into detectron2's DatasetCatalog/MetadataCatalog.

    The loader runs only when detectron2 asks for the records (``DatasetCatalog.get``); boxes
    get detectron2's ``BoxMode``. Names already registered there are left alone. Returns the
    names registered by this call.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    from pcna_seg.data import catalog

    def loader(name: str) -> list[dict[str, Any]]:
        records = catalog.get_dataset(name, root)
        out = []
        for rec in records:
            rec = dict(rec)
            rec["annotations"] = [
                {**a, "bbox_mode": BoxMode[str(a.get("bbox_mode", "XYWH_ABS"))]}
                for a in rec.get("annotations", [])
            ]
            out.append(rec)
        return out

    done = []
    for name in names:
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda n=name: loader(n))
        try:
            meta = catalog.get_metadata(name, root)
        except Exception:  # metadata is resolved again when detectron2 loads the records
            meta = {}
        if meta.get("thing_classes"):
            MetadataCatalog.get(name).set(thing_classes=list(meta["thing_classes"]))
        done.append(name)
    return done
