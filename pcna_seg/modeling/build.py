"""Build the torchvision Mask R-CNN described by a config (ResNet-{18,34,50,101}-FPN).

Nothing is downloaded: every network is created with ``weights=None``; pretrained weights come
from ``MODEL.WEIGHTS`` through :func:`pcna_seg.modeling.weights.load_weights`.

Config → model:

- ``MODEL.RESNETS.DEPTH`` / ``NORM`` (``"FrozenBN"`` or ``"BN"``); ``MODEL.BACKBONE.FREEZE_AT``
  with detectron2's meaning (0 = train everything, 1 = freeze the stem, 2 = stem + res2, ...
  5 = the whole ResNet), i.e. torchvision ``trainable_layers = 5 - FREEZE_AT``. With ``BN``,
  the norm layers of frozen stages become FrozenBatchNorm2d (statistics no longer drift).
- input channels = ``len(INPUT.CHANNELS)``; for a count other than 3 the stem conv is rebuilt
  to accept it. ``MODEL.PIXEL_MEAN/STD`` (one value per channel) are applied in the model.
- ``MODEL.FPN.OUT_CHANNELS``; anchors: ``MODEL.ANCHOR_GENERATOR.SIZES`` (one list per pyramid
  level, P2..P6 incl. the max-pool level) and ``ASPECT_RATIOS`` (one list, or one per level).
- ``MODEL.RPN.*``, ``MODEL.ROI_HEADS.*`` (NUM_CLASSES foreground classes; +1 background inside),
  ``MODEL.ROI_BOX_HEAD.FC_DIM``, ``MODEL.ROI_MASK_HEAD.CONV_DIM/NUM_CONV``,
  ``TEST.DETECTIONS_PER_IMAGE``.

- detectron2 compatibility (what its model-zoo weights need, see
  ``configs/Base-MaskRCNN-FPN-detectron2-weights.yaml``): ``MODEL.RESNETS.STRIDE_IN_1X1``
  (R50/101 stride in the 1x1 conv), ``MODEL.ANCHOR_GENERATOR.NAME`` (``DefaultAnchorGenerator``
  = detectron2's exact anchors, ``TorchvisionAnchorGenerator`` = rounded) and ``OFFSET``,
  ``MODEL.ROI_*_HEAD.POOLER_TYPE`` (``ROIAlign`` unaligned, ``ROIAlignV2`` aligned) and
  ``POOLER_SAMPLING_RATIO``; ``MODEL.RESNETS.STEM_OUT_CHANNELS/RES2_OUT_CHANNELS`` (narrow
  R18/34 for tests and CPU; 0 = standard widths).

Every name-valued key names what is built; another value is a ConfigError listing the
supported ones (``MODEL.BACKBONE.NAME``, ``MODEL.ROI_HEADS.NAME`` — no cascade —,
``MODEL.ROI_BOX_HEAD.NAME``, ``MODEL.ROI_MASK_HEAD.NAME``, ``MODEL.ANCHOR_GENERATOR.NAME``,
``POOLER_TYPE``); ``MODEL.RESNETS.OUT_FEATURES`` must contain ``MODEL.FPN.IN_FEATURES``.

The model's transform never resizes (the mapper does), it only normalises and pads.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from pcna_seg.errors import ConfigError
from pcna_seg.modeling.d2_adapter import check_engine
from pcna_seg.modeling.d2_layers import POOLER_TYPES, ExactAnchorGenerator, move_stride_to_1x1
from pcna_seg.modeling.heads import PcnaRoIHeads, build_box_head, build_mask_head

logger = logging.getLogger(__name__)

DEPTHS = {18: "resnet18", 34: "resnet34", 50: "resnet50", 101: "resnet101"}
_STAGE_OF = {"res2": 1, "res3": 2, "res4": 3, "res5": 4}
_FROZEN_PREFIXES = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
_LAYERS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}
#: name-valued config keys → the one value each supports
SUPPORTED_NAMES = {
    "MODEL.BACKBONE.NAME": ("build_resnet_fpn_backbone",),
    "MODEL.ROI_HEADS.NAME": ("StandardROIHeads",),
    "MODEL.ROI_BOX_HEAD.NAME": ("FastRCNNConvFCHead",),
    "MODEL.ROI_MASK_HEAD.NAME": ("MaskRCNNConvUpsampleHead",),
    "MODEL.ANCHOR_GENERATOR.NAME": ("TorchvisionAnchorGenerator", "DefaultAnchorGenerator"),
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": tuple(POOLER_TYPES),
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE": tuple(POOLER_TYPES),
}
_WHAT_ELSE = {
    "MODEL.ROI_HEADS.NAME": " (cascade and other RoI heads are not built by pcna_seg)",
    "MODEL.BACKBONE.NAME": " (a ResNet-FPN; the depth is MODEL.RESNETS.DEPTH)",
}


def check_names(cfg: Any) -> None:
    """ConfigError for a name-valued key whose value pcna_seg does not build (see SUPPORTED_NAMES)."""
    for key, allowed in SUPPORTED_NAMES.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        if str(node) not in allowed:
            raise ConfigError(
                f"{key} {str(node)!r} is not supported{_WHAT_ELSE.get(key, '')}; "
                f"supported: {', '.join(allowed)}"
            )


def mask_paste_for(cfg: Any) -> str:
    """How this model's box-frame masks are pasted into images: the inverse of its mask pooler
    (aligned RoIAlign, ``ROIAlignV2`` → "aligned", detectron2's paste; else torchvision's)."""
    return "aligned" if cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE == "ROIAlignV2" else "torchvision"


def resolve_device(cfg: Any) -> torch.device:
    """``MODEL.DEVICE`` → torch.device (:func:`pcna_seg.engine.launch.resolve_device`)."""
    from pcna_seg.engine.launch import resolve_device as device_of

    return device_of(cfg.MODEL.DEVICE)


class NoResizeTransform(GeneralizedRCNNTransform):
    """Normalises by pixel mean/std and pads to a multiple of 32; never resizes.

    Its postprocess leaves boxes in the input frame and masks as the mask head's (N, 1, M, M)
    box-frame probabilities: :func:`pcna_seg.modeling.postprocess.to_prediction` pastes them into
    box crops of the original image (bounded memory), instead of torchvision's N × H × W paste.
    """

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):  # noqa: D102
        return image, target

    def postprocess(self, result, image_shapes, original_image_sizes):  # noqa: D102
        return result


class PcnaMaskRCNN(GeneralizedRCNN):
    """torchvision Mask R-CNN (same parameter names as ``maskrcnn_resnet50_fpn``).

    Train: ``model(images, targets) -> dict`` of losses. Eval: ``model(images) -> list`` of
    ``{"boxes" (N, 4) XYXY, "labels" int64 1-based, "scores", "masks" (N, 1, M, M) float mask
    probabilities on each box, "class_probs" (N, K + 1)}`` in each input image's pixel frame;
    :func:`pcna_seg.modeling.postprocess.to_prediction` maps them to the original image.

    Attributes: ``cfg_num_classes`` (K), ``class_names`` (set by the trainer, else None),
    ``input_channels`` (recipe names).
    """

    def __init__(self, backbone, rpn, roi_heads, transform, num_classes: int, channels: list[str]) -> None:
        super().__init__(backbone, rpn, roi_heads, transform)
        self.cfg_num_classes = int(num_classes)
        self.class_names: list[str] | None = None
        self.input_channels = list(channels)


def _freeze_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d under ``module`` with a FrozenBatchNorm2d holding its stats."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            frozen.weight.copy_(module.weight)
            frozen.bias.copy_(module.bias)
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = _freeze_norm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _stem_conv(in_channels: int, out_channels: int = 64) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _resnet_body(cfg: Any, depth: int, norm_layer: Any) -> resnet.ResNet:
    """torchvision ResNet of ``depth`` (random weights) with the widths and stride placement of
    ``MODEL.RESNETS``: STEM_OUT_CHANNELS / RES2_OUT_CHANNELS (0 = standard; others only for the
    BasicBlock R18/34, stage widths w, 2w, 4w, 8w) and STRIDE_IN_1X1 (bottleneck R50/101)."""
    r = cfg.MODEL.RESNETS
    stem, res2 = int(r.STEM_OUT_CHANNELS), int(r.RES2_OUT_CHANNELS)
    body = getattr(resnet, DEPTHS[depth])(weights=None, norm_layer=norm_layer)
    std_res2 = 64 if depth in _LAYERS else 256
    if depth not in _LAYERS and (stem not in (0, 64) or res2 not in (0, std_res2)):
        raise ConfigError(
            f"MODEL.RESNETS.STEM_OUT_CHANNELS {stem} / RES2_OUT_CHANNELS {res2}: R{depth} is built with "
            f"the standard widths only (64 / {std_res2}; 0 means standard); other widths work for R18/34"
        )
    if depth in _LAYERS and (stem or 64, res2 or 64) != (64, 64):
        stem, res2 = stem or 64, res2 or 64
        body.conv1 = _stem_conv(3, stem)
        body.bn1 = norm_layer(stem)
        body.inplanes = stem
        for i, blocks in enumerate(_LAYERS[depth]):
            setattr(
                body, f"layer{i + 1}", body._make_layer(resnet.BasicBlock, res2 * 2**i, blocks, 1 + (i > 0))
            )
        body.fc = nn.Linear(res2 * 8, 1)  # never used (the FPN takes the stage outputs)
        for m in body.modules():  # torchvision's ResNet init for the rebuilt layers
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    if bool(r.STRIDE_IN_1X1):
        if depth in _LAYERS:
            raise ConfigError(
                f"MODEL.RESNETS.STRIDE_IN_1X1 is True but R{depth} has no 1x1 conv in its blocks; "
                "set it False (it applies to R50/101)"
            )
        move_stride_to_1x1(body)
    body.stride_in_1x1 = bool(r.STRIDE_IN_1X1)
    return body


def build_backbone(cfg: Any) -> BackboneWithFPN:
    """ResNet-FPN backbone with ``len(INPUT.CHANNELS)`` input channels, random weights."""
    depth = int(cfg.MODEL.RESNETS.DEPTH)
    if depth not in DEPTHS:
        raise ConfigError(f"MODEL.RESNETS.DEPTH must be one of {sorted(DEPTHS)}, got {depth}")
    norm = str(cfg.MODEL.RESNETS.NORM)
    if norm == "FrozenBN":
        norm_layer = FrozenBatchNorm2d
    elif norm == "BN":
        norm_layer = nn.BatchNorm2d
    else:
        raise ConfigError(f"MODEL.RESNETS.NORM must be 'FrozenBN' or 'BN', got {norm!r}")
    freeze_at = int(cfg.MODEL.BACKBONE.FREEZE_AT)
    if not 0 <= freeze_at <= 5:
        raise ConfigError(f"MODEL.BACKBONE.FREEZE_AT must be between 0 and 5, got {freeze_at}")
    feats = list(cfg.MODEL.FPN.IN_FEATURES)
    bad = [f for f in feats if f not in _STAGE_OF]
    if bad or not feats or feats != sorted(feats, key=_STAGE_OF.get):
        raise ConfigError(f"MODEL.FPN.IN_FEATURES must be an ordered subset of res2..res5, got {feats}")
    n_in = len(cfg.INPUT.CHANNELS)
    if n_in < 1:
        raise ConfigError("INPUT.CHANNELS is empty; name at least one channel")

    out_feats = list(cfg.MODEL.RESNETS.OUT_FEATURES)
    if not set(feats) <= set(out_feats):
        raise ConfigError(
            f"MODEL.FPN.IN_FEATURES {feats} must be among MODEL.RESNETS.OUT_FEATURES {out_feats}"
        )
    body = _resnet_body(cfg, depth, norm_layer)
    if n_in != 3:
        body.conv1 = _stem_conv(n_in, body.conv1.out_channels)
    if norm == "BN" and freeze_at > 0:
        for name in _FROZEN_PREFIXES[: freeze_at + 1]:  # stem = conv1 + bn1
            setattr(body, name, _freeze_norm(getattr(body, name)))
    # freeze: torchvision trainable_layers = 5 - FREEZE_AT (stem counts as one layer)
    trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][: 5 - freeze_at]
    if freeze_at == 0:
        trainable.append("bn1")
    for name, param in body.named_parameters():
        if not any(name.startswith(t) for t in trainable):
            param.requires_grad_(False)
    returned = [_STAGE_OF[f] for f in feats]
    stage2 = body.inplanes // 8  # res2 width (64 for R18/34, 256 for R50/101)
    return BackboneWithFPN(
        body,
        return_layers={f"layer{k}": str(v) for v, k in enumerate(returned)},
        in_channels_list=[stage2 * 2 ** (k - 1) for k in returned],
        out_channels=int(cfg.MODEL.FPN.OUT_CHANNELS),
        extra_blocks=LastLevelMaxPool(),
    )


def _anchor_generator(cfg: Any, n_levels: int) -> AnchorGenerator:
    sizes = [list(s) if isinstance(s, (list, tuple)) else [s] for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES]
    ratios = [
        list(r) if isinstance(r, (list, tuple)) else [r] for r in cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS
    ]
    if len(sizes) != n_levels:
        raise ConfigError(
            f"MODEL.ANCHOR_GENERATOR.SIZES has {len(sizes)} lists but the FPN has {n_levels} levels "
            f"({n_levels - 1} from MODEL.FPN.IN_FEATURES + the pool level); give one list per level"
        )
    if len(ratios) == 1:
        ratios = ratios * n_levels
    if len(ratios) != n_levels:
        raise ConfigError(
            f"MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS must hold 1 or {n_levels} lists, got {len(ratios)}"
        )
    counts = {len(s) * len(r) for s, r in zip(sizes, ratios)}
    if len(counts) != 1:
        raise ConfigError("MODEL.ANCHOR_GENERATOR: every level must have the same number of anchors")
    sizes_t = tuple(tuple(float(v) for v in s) for s in sizes)
    ratios_t = tuple(tuple(float(v) for v in r) for r in ratios)
    offset = float(cfg.MODEL.ANCHOR_GENERATOR.OFFSET)
    if cfg.MODEL.ANCHOR_GENERATOR.NAME == "DefaultAnchorGenerator":
        return ExactAnchorGenerator(sizes_t, ratios_t, offset=offset)
    if offset != 0.0:
        raise ConfigError(
            "MODEL.ANCHOR_GENERATOR.OFFSET is only applied by MODEL.ANCHOR_GENERATOR.NAME "
            "DefaultAnchorGenerator; set OFFSET 0.0 or use that generator"
        )
    return AnchorGenerator(sizes_t, ratios_t)


def _thresholds(values: Any, key: str) -> tuple[float, float]:
    """(bg, fg) IoU thresholds from a 1- or 2-value list."""
    vals = [float(v) for v in values]
    if len(vals) not in (1, 2):
        raise ConfigError(f"{key} must hold one or two IoU values, got {vals}")
    return min(vals), max(vals)


def build_model(cfg: Any) -> PcnaMaskRCNN:
    """Build the Mask R-CNN for ``cfg`` on ``resolve_device(cfg)``, random weights.

    ``MODEL.ENGINE detectron2`` (where detectron2 imports) returns detectron2's model with the
    same calling convention instead (:mod:`pcna_seg.modeling.d2_engine`).

    Load pretrained/checkpoint weights afterwards with ``load_weights(model, cfg.MODEL.WEIGHTS)``.
    """
    engine = check_engine(cfg)
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        raise ConfigError(
            f"MODEL.META_ARCHITECTURE must be GeneralizedRCNN, got {cfg.MODEL.META_ARCHITECTURE!r}"
        )
    check_names(cfg)
    channels = list(cfg.INPUT.CHANNELS)
    mean, std = [float(v) for v in cfg.MODEL.PIXEL_MEAN], [float(v) for v in cfg.MODEL.PIXEL_STD]
    for key, vals in (("PIXEL_MEAN", mean), ("PIXEL_STD", std)):
        if len(vals) != len(channels):
            raise ConfigError(f"MODEL.{key} has {len(vals)} values but INPUT.CHANNELS has {len(channels)}")
    if any(s <= 0 for s in std):
        raise ConfigError(f"MODEL.PIXEL_STD values must be > 0, got {std}")
    num_classes = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    if num_classes < 1:
        raise ConfigError(f"MODEL.ROI_HEADS.NUM_CLASSES must be >= 1, got {num_classes}")
    if engine == "detectron2":
        from pcna_seg.modeling.d2_engine import build_d2_model

        return build_d2_model(cfg)

    backbone = build_backbone(cfg)
    out_ch = backbone.out_channels
    featmaps = [str(i) for i in range(len(cfg.MODEL.FPN.IN_FEATURES))]
    anchors = _anchor_generator(cfg, len(featmaps) + 1)
    r = cfg.MODEL.RPN
    rpn_bg, rpn_fg = _thresholds(r.IOU_THRESHOLDS, "MODEL.RPN.IOU_THRESHOLDS")
    rpn = RegionProposalNetwork(
        anchors,
        RPNHead(out_ch, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=rpn_fg,
        bg_iou_thresh=rpn_bg,
        batch_size_per_image=int(r.BATCH_SIZE_PER_IMAGE),
        positive_fraction=float(r.POSITIVE_FRACTION),
        pre_nms_top_n={"training": int(r.PRE_NMS_TOPK_TRAIN), "testing": int(r.PRE_NMS_TOPK_TEST)},
        post_nms_top_n={"training": int(r.POST_NMS_TOPK_TRAIN), "testing": int(r.POST_NMS_TOPK_TEST)},
        nms_thresh=float(r.NMS_THRESH),
    )
    h = cfg.MODEL.ROI_HEADS
    box_pool, box_head, box_pred = build_box_head(
        out_ch,
        featmaps,
        int(cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION),
        int(cfg.MODEL.ROI_BOX_HEAD.FC_DIM),
        num_classes,
        int(cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO),
        POOLER_TYPES[cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE],
    )
    mask_parts: tuple[Any, Any, Any] = (None, None, None)
    if cfg.MODEL.MASK_ON:
        m = cfg.MODEL.ROI_MASK_HEAD
        mask_parts = build_mask_head(
            out_ch,
            featmaps,
            int(m.POOLER_RESOLUTION),
            int(m.CONV_DIM),
            int(m.NUM_CONV),
            num_classes,
            int(m.POOLER_SAMPLING_RATIO),
            POOLER_TYPES[m.POOLER_TYPE],
        )
    bg, fg = _thresholds(h.IOU_THRESHOLDS, "MODEL.ROI_HEADS.IOU_THRESHOLDS")
    roi_heads = PcnaRoIHeads(
        box_pool,
        box_head,
        box_pred,
        fg,
        bg,
        int(h.BATCH_SIZE_PER_IMAGE),
        float(h.POSITIVE_FRACTION),
        None,
        float(h.SCORE_THRESH_TEST),
        float(h.NMS_THRESH_TEST),
        int(cfg.TEST.DETECTIONS_PER_IMAGE),
        mask_roi_pool=mask_parts[0],
        mask_head=mask_parts[1],
        mask_predictor=mask_parts[2],
        one_class_per_box=bool(h.get("ONE_CLASS_PER_BOX", True)),
        class_agnostic_nms=bool(h.NMS_CLASS_AGNOSTIC),
    )
    transform = NoResizeTransform(min_size=1, max_size=1, image_mean=mean, image_std=std)
    model = PcnaMaskRCNN(backbone, rpn, roi_heads, transform, num_classes, channels)
    model.mask_paste = mask_paste_for(cfg)
    device = resolve_device(cfg)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "Built Mask R-CNN R%d-FPN (%d input channels %s, %d classes, %.1fM trainable parameters) on %s",
        int(cfg.MODEL.RESNETS.DEPTH),
        len(channels),
        channels,
        num_classes,
        n_train / 1e6,
        device,
    )
    return model.to(device)
