"""Model construction: tiny CPU forward passes, class probabilities, config mapping."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from pcna_seg.config.defaults import get_default_config
from pcna_seg.errors import ConfigError
from pcna_seg.modeling import build_model, detectron2_available, resolve_device

LOSS_KEYS = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


def tiny_cfg(num_classes: int = 3, channels=("pcna", "dic", "otsu_mask")):
    cfg = get_default_config()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 300
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 100
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    cfg.INPUT.CHANNELS = list(channels)
    cfg.MODEL.PIXEL_MEAN = [0.5] * len(channels)
    cfg.MODEL.PIXEL_STD = [0.25] * len(channels)
    return cfg


def _targets():
    masks = torch.zeros(3, 128, 128, dtype=torch.uint8)
    masks[0, 10:30, 12:34] = 1
    masks[1, 60:90, 50:80] = 1
    masks[2, 95:120, 90:118] = 1
    boxes = torch.tensor([[12, 10, 34, 30], [50, 60, 80, 90], [90, 95, 118, 120]], dtype=torch.float32)
    return [{"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "masks": masks}]


def test_train_and_eval_forward_tiny_cpu():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    assert model.cfg_num_classes == 3 and model.input_channels == ["pcna", "dic", "otsu_mask"]
    images = [torch.rand(3, 128, 128)]
    model.train()
    losses = model(images, _targets())
    assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad is not None
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "masks": torch.zeros(0, 128, 128, dtype=torch.uint8)}]  # fmt: skip
    assert torch.isfinite(sum(model(images, empty).values()))  # blank images train too

    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 100, 140)])[0]
    n = out["boxes"].shape[0]
    assert n > 0
    assert out["masks"].shape == (n, 1, 28, 28)  # box-frame probabilities, pasted by postprocess
    assert (out["boxes"][:, 2] <= 140).all() and (out["boxes"][:, 3] <= 100).all()  # input frame
    assert out["class_probs"].shape == (n, 4)
    assert torch.allclose(out["class_probs"].sum(dim=1), torch.ones(n), atol=1e-5)
    assert torch.equal(out["class_probs"][:, 1:].argmax(dim=1) + 1, out["labels"])
    assert torch.allclose(out["class_probs"].gather(1, out["labels"][:, None])[:, 0], out["scores"])
    assert float(out["boxes"][:, 2].max()) <= 140 and float(out["boxes"][:, 3].max()) <= 100


def test_detections_per_image_and_per_class_mode():
    cfg = tiny_cfg()
    cfg.TEST.DETECTIONS_PER_IMAGE = 7
    cfg.MODEL.ROI_HEADS.ONE_CLASS_PER_BOX = False
    torch.manual_seed(1)
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 128, 128), torch.rand(3, 96, 128)])
    for det in out:
        assert 0 < det["boxes"].shape[0] <= 7
        assert torch.allclose(det["class_probs"].sum(dim=1), torch.ones(len(det["labels"])), atol=1e-5)
        assert torch.allclose(det["class_probs"].gather(1, det["labels"][:, None])[:, 0], det["scores"])


@pytest.mark.parametrize("channels", [("gray",), ("pcna", "pcna", "dic", "otsu_mask")])
def test_input_channel_count_adapts_stem(channels):
    model = build_model(tiny_cfg(channels=channels))
    assert model.backbone.body.conv1.in_channels == len(channels)
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(len(channels), 64, 64)])
    assert "class_probs" in out[0]


@pytest.mark.parametrize("depth", [34, 50, 101])
def test_depths_construct(depth):
    cfg = tiny_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    model = build_model(cfg)
    width = {34: 512, 50: 2048, 101: 2048}[depth]
    assert model.backbone.fpn.inner_blocks[-1][0].in_channels == width
    assert len(model.backbone.body.layer3) == {34: 6, 50: 6, 101: 23}[depth]


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 5])
def test_freeze_at_follows_detectron2(freeze_at):
    cfg = tiny_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    cfg.MODEL.RESNETS.NORM = "BN"
    body = build_model(cfg).backbone.body
    stages = ["conv1", "layer1", "layer2", "layer3", "layer4"]
    for i, name in enumerate(stages):
        trainable = any(p.requires_grad for n, p in body.named_parameters() if n.startswith(name))
        assert trainable == (i >= freeze_at), (name, freeze_at)
        norms = [m for n, m in body.named_modules() if n.startswith(name if i else "bn1")]
        frozen_norm = any(isinstance(m, FrozenBatchNorm2d) for m in norms)
        assert frozen_norm == (i < freeze_at), (name, freeze_at)  # BN of frozen stages is frozen


def test_config_errors():
    cfg = tiny_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32]]
    with pytest.raises(ConfigError, match="ANCHOR_GENERATOR.SIZES"):
        build_model(cfg)
    cfg = tiny_cfg()
    cfg.MODEL.PIXEL_MEAN = [0.0]
    with pytest.raises(ConfigError, match="PIXEL_MEAN"):
        build_model(cfg)
    cfg = tiny_cfg()
    cfg.MODEL.RESNETS.NORM = "GN"
    with pytest.raises(ConfigError, match="MODEL.RESNETS.NORM"):
        build_model(cfg)


def test_engine_and_device():
    cfg = tiny_cfg()
    cfg.MODEL.DEVICE = "auto"
    assert resolve_device(cfg).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cuda"
        with pytest.raises(ConfigError, match="MODEL.DEVICE"):
            resolve_device(cfg)
    cfg.MODEL.ENGINE = "detectron2"
    with pytest.raises(ConfigError, match="MODEL.ENGINE"):
        build_model(cfg)  # either not installed, or importable but not built by pcna_seg
    assert isinstance(detectron2_available(), bool)


def test_postprocess_with_no_proposals_returns_empty_detections() -> None:
    """An untrained or diverged RPN can leave no proposal at all; the head must still answer."""
    from pcna_seg.config import load_config
    from pcna_seg.modeling import build_model

    cfg = load_config("configs/quick_schedules/quick_stage3_pcna.yaml", ["MODEL.DEVICE", "cpu"])
    heads = build_model(cfg).roi_heads
    k = cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1
    boxes, scores, labels = heads.postprocess_detections(
        torch.zeros(0, k), torch.zeros(0, 4 * k), [torch.zeros(0, 4)], [(64, 64)]
    )
    assert boxes[0].shape == (0, 4) and scores[0].shape == (0,) and labels[0].shape == (0,)
    assert heads._last_class_probs[0].shape == (0, k)
