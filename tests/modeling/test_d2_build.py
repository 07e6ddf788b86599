"""Config keys do what they say: unsupported names are errors; detectron2-compatible options build."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from pcna_seg.config import load_config
from pcna_seg.config.defaults import get_default_config
from pcna_seg.errors import ConfigError
from pcna_seg.modeling import build_model
from pcna_seg.modeling.d2_layers import PoolerRoIAlign


def small_cfg():
    cfg = get_default_config()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    return cfg


@pytest.mark.parametrize(
    ("key", "value", "supported"),
    [
        ("MODEL.ROI_HEADS.NAME", "CascadeROIHeads", "StandardROIHeads"),
        ("MODEL.BACKBONE.NAME", "build_retinanet_resnet_fpn_backbone", "build_resnet_fpn_backbone"),
        ("MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvHead", "FastRCNNConvFCHead"),
        ("MODEL.ROI_MASK_HEAD.NAME", "PointRendMaskHead", "MaskRCNNConvUpsampleHead"),
        ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIPool", "ROIAlign, ROIAlignV2"),
        ("MODEL.ROI_MASK_HEAD.POOLER_TYPE", "ROIAlignRotated", "ROIAlign, ROIAlignV2"),
        ("MODEL.ANCHOR_GENERATOR.NAME", "RotatedAnchorGenerator", "DefaultAnchorGenerator"),
    ],
)
def test_unsupported_names_are_config_errors(key, value, supported):
    cfg = small_cfg()
    node, leaf = cfg, key.split(".")
    for part in leaf[:-1]:
        node = node[part]
    node[leaf[-1]] = value
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        build_model(cfg)
    assert value in str(err.value) and supported in str(err.value)


def test_other_inconsistent_keys_are_config_errors():
    cfg = small_cfg()
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    with pytest.raises(ConfigError, match="MODEL.RESNETS.OUT_FEATURES"):
        build_model(cfg)
    cfg = small_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.OFFSET = 0.5
    with pytest.raises(ConfigError, match="OFFSET"):
        build_model(cfg)
    cfg = small_cfg()
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = True  # R18 has no 1x1 conv
    with pytest.raises(ConfigError, match="STRIDE_IN_1X1"):
        build_model(cfg)
    cfg = small_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 128
    with pytest.raises(ConfigError, match="RES2_OUT_CHANNELS"):
        build_model(cfg)


def test_narrow_resnet18_widths():
    cfg = small_cfg()
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 16
    model = build_model(cfg)
    body = model.backbone.body
    assert body.conv1.out_channels == 8 and body.layer1[0].downsample is not None  # 8 -> 16 shortcut
    assert [getattr(body, f"layer{i}")[-1].conv2.out_channels for i in range(1, 5)] == [16, 32, 64, 128]
    assert model.backbone.fpn.inner_blocks[3][0].in_channels == 128
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 96)])[0]
    assert out["boxes"].shape[1] == 4


def test_pooler_type_sets_aligned_and_sampling_ratio():
    cfg = small_cfg()
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
    heads = build_model(cfg).roi_heads
    assert heads.box_roi_pool.aligned and heads.box_roi_pool.sampling_ratio == 0
    assert not heads.mask_roi_pool.aligned and heads.mask_roi_pool.sampling_ratio == 2
    feat = torch.rand(1, 4, 16, 16)
    boxes = [torch.tensor([[3.3, 2.1, 40.7, 30.2]])]
    for aligned in (False, True):
        pool = PoolerRoIAlign(["0"], 7, 2, aligned)
        got = pool({"0": feat}, boxes, [(64, 64)])
        rois = torch.tensor([[0.0, 3.3, 2.1, 40.7, 30.2]])
        ref = roi_align(feat, rois, 7, spatial_scale=0.25, sampling_ratio=2, aligned=aligned)
        assert torch.allclose(got, ref)
    a = PoolerRoIAlign(["0"], 7, 2, True)({"0": feat}, boxes, [(64, 64)])
    b = PoolerRoIAlign(["0"], 7, 2, False)({"0": feat}, boxes, [(64, 64)])
    assert not torch.allclose(a, b)


def test_detectron2_weights_config_loads_and_builds():
    cfg = load_config(
        "configs/Base-MaskRCNN-FPN-detectron2-weights.yaml",
        ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "50", "MODEL.ROI_HEADS.NUM_CLASSES", "3"],
    )
    assert cfg.MODEL.PIXEL_MEAN == [0.406, 0.456, 0.485]  # [103.53, 116.28, 123.675] / 255, BGR
    model = build_model(cfg)
    assert model.backbone.body.layer3[0].conv1.stride == (2, 2)
    assert model.roi_heads.mask_roi_pool.aligned and model.roi_heads.box_roi_pool.sampling_ratio == 0
    assert type(model.rpn.anchor_generator).__name__ == "ExactAnchorGenerator"
    mean = torch.tensor(model.transform.image_mean) * 255
    assert torch.allclose(mean, torch.tensor([103.53, 116.28, 123.675]), atol=1e-3)


def test_detectron2_status_and_engine_check_without_detectron2(monkeypatch):
    from pcna_seg.modeling import d2_adapter

    monkeypatch.setattr(d2_adapter, "detectron2_available", lambda: False)
    assert d2_adapter.detectron2_status().startswith("not installed")
    cfg = small_cfg()
    cfg.MODEL.ENGINE = "detectron2"
    with pytest.raises(ConfigError, match="detectron2 is not installed"):
        d2_adapter.check_engine(cfg)
    cfg.MODEL.ENGINE = "mmdet"
    with pytest.raises(ConfigError, match="MODEL.ENGINE must be one of torchvision, detectron2"):
        build_model(cfg)


def test_stage1_config_from_detectron2_weights_matches_the_base():
    keys = [
        "PIXEL_MEAN", "PIXEL_STD", "RESNETS.STRIDE_IN_1X1", "RESNETS.DEPTH", "ANCHOR_GENERATOR.NAME",
        "ROI_BOX_HEAD.POOLER_TYPE", "ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", "ROI_MASK_HEAD.POOLER_TYPE",
        "ROI_MASK_HEAD.POOLER_SAMPLING_RATIO",
    ]  # fmt: skip
    base = load_config("configs/Base-MaskRCNN-FPN-detectron2-weights.yaml")
    stage = load_config("configs/pcna/stage1_kaggle_R101_detectron2_weights.yaml")
    plain = load_config("configs/pcna/stage1_kaggle_R101.yaml")

    def get(cfg, key):
        for part in key.split("."):
            cfg = cfg[part]
        return cfg

    assert all(get(base.MODEL, k) == get(stage.MODEL, k) for k in keys)
    assert stage.SOLVER == plain.SOLVER and stage.INPUT == plain.INPUT  # the seed's stage 1 otherwise
