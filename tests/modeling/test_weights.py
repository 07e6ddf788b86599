"""Weight loading: checkpoints, torchvision state dicts, head re-initialisation, errors."""

from __future__ import annotations

import pathlib

import pytest
import torch
from torchvision.models import resnet18
from torchvision.models.detection import maskrcnn_resnet50_fpn

from pcna_seg.config.defaults import get_default_config
from pcna_seg.errors import WeightsError
from pcna_seg.modeling import build_model, load_weights
from pcna_seg.modeling.heads import CLASS_SPECIFIC_PREFIXES
from pcna_seg.modeling.weights import adapt_stem


def tiny_cfg(num_classes: int = 3, channels=("pcna", "dic", "otsu_mask")):
    """Small R18-FPN config (CPU-friendly)."""
    cfg = get_default_config()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.INPUT.CHANNELS = list(channels)
    cfg.MODEL.PIXEL_MEAN = [0.0] * len(channels)
    cfg.MODEL.PIXEL_STD = [1.0] * len(channels)
    return cfg


def _is_head(name: str) -> bool:
    return any(name.startswith(p) for p in CLASS_SPECIFIC_PREFIXES)


def test_project_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    src = build_model(tiny_cfg())
    opt = torch.optim.SGD([p for p in src.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    path = tmp_path / "model_final.pth"
    torch.save({"model": src.state_dict(), "optimizer": opt.state_dict(), "iteration": 5,
                "cfg": tiny_cfg().dump()}, path)  # fmt: skip
    torch.manual_seed(1)
    dst = build_model(tiny_cfg())
    report = load_weights(dst, path)
    assert len(report.loaded) == len(dst.state_dict()) and not report.reinitialised and not report.missing
    for name, tensor in dst.state_dict().items():
        assert torch.equal(tensor, src.state_dict()[name]), name
    assert "loaded" in report.table() and str(path) in report.table()


def test_head_reinit_keeps_everything_else(tmp_path):
    torch.manual_seed(0)
    src = build_model(tiny_cfg(num_classes=1))
    path = tmp_path / "stage2.pth"
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, path)  # DDP-style prefix
    torch.manual_seed(1)
    dst = build_model(tiny_cfg(num_classes=3))
    fresh = {k: v.clone() for k, v in dst.state_dict().items()}
    report = load_weights(dst, path)
    heads = sorted(k for k in dst.state_dict() if _is_head(k))
    assert sorted(report.reinitialised) == heads and len(heads) == 6
    for name, tensor in dst.state_dict().items():
        if _is_head(name):
            assert torch.equal(tensor, fresh[name]), name  # keeps the fresh init
        else:
            assert torch.equal(tensor, src.state_dict()[name]), name
    table = report.table()
    assert "re-initialised" in table and "[2, 64]->[4, 64]" in table


def test_torchvision_coco_layout_into_r50(tmp_path):
    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    # key layout of the published COCO .pth files (rpn.head.conv.weight, mask_fcn1..4)
    state = {
        _legacy_mask(k.replace("rpn.head.conv.0.0.", "rpn.head.conv.")): v for k, v in tv.state_dict().items()
    }
    assert "roi_heads.mask_head.mask_fcn1.weight" in state and "rpn.head.conv.weight" in state
    path = tmp_path / "maskrcnn_resnet50_fpn_coco.pth"
    torch.save(state, path)
    cfg = tiny_cfg(num_classes=3, channels=("gray",))
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.FPN.OUT_CHANNELS = 256
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 1024
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 256
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 4
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    model = build_model(cfg)
    report = load_weights(model, path)
    assert report.adapted == ["backbone.body.conv1.weight"] and len(report.reinitialised) == 6
    assert not report.missing and not report.ignored
    ref = tv.state_dict()
    for name, tensor in model.state_dict().items():
        if name == "backbone.body.conv1.weight":
            assert torch.allclose(tensor, ref[name].sum(dim=1, keepdim=True))  # 1 channel: sum
        elif not _is_head(name):
            assert torch.equal(tensor, ref[name]), name


def _legacy_mask(key: str) -> str:
    if key.startswith("roi_heads.mask_head."):
        idx, _, leaf = key[len("roi_heads.mask_head.") :].split(".", 2)
        return f"roi_heads.mask_head.mask_fcn{int(idx) + 1}.{leaf}"
    return key


def test_bare_resnet_backbone_and_stem_rule(tmp_path):
    torch.manual_seed(0)
    body = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(body.state_dict(), path)
    cfg = tiny_cfg()
    cfg.MODEL.RESNETS.NORM = "BN"
    model = build_model(cfg)
    report = load_weights(model, path)
    assert torch.equal(model.backbone.body.layer4[1].conv2.weight, body.layer4[1].conv2.weight)
    assert all(k.startswith("backbone.body.") for k in report.loaded) and len(report.loaded) > 50
    assert any(k.startswith("rpn.") for k in report.missing)
    w = torch.randn(64, 3, 7, 7)
    four = adapt_stem(w, 4)
    assert four.shape == (64, 4, 7, 7)
    img = torch.rand(1, 1, 16, 16)
    same = torch.nn.functional.conv2d(img.repeat(1, 3, 1, 1), w)
    assert torch.allclose(torch.nn.functional.conv2d(img.repeat(1, 4, 1, 1), four), same, atol=1e-4)


def test_incompatible_architecture_names_parameter(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, path)
    cfg = tiny_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    with pytest.raises(WeightsError) as err:
        load_weights(build_model(cfg), path)
    msg = str(err.value)
    assert "backbone." in msg and "shape" in msg and "r18.pth" in msg


def test_missing_corrupt_and_unsafe_files(tmp_path):
    model = build_model(tiny_cfg())
    with pytest.raises(WeightsError, match="not found.*nothing.pth"):
        load_weights(model, tmp_path / "nothing.pth")
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"\x80\x02this is not a checkpoint" * 10)
    with pytest.raises(WeightsError, match="[Cc]annot read weights file .*corrupt"):
        load_weights(model, bad)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": model.state_dict(), "where": pathlib.PurePosixPath("/x")}, unsafe)
    with pytest.raises(WeightsError, match="Python objects"):
        load_weights(model, unsafe)
    assert load_weights(model, unsafe, allow_pickle=True).loaded
    other = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(2)}, other)
    with pytest.raises(WeightsError, match="shares no parameter"):
        load_weights(model, other)
