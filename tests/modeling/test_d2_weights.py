"""detectron2 weights without detectron2: the committed fixture reproduces detectron2's outputs,
and each conversion rule (class rows, anchors, stride, file safety) holds on its own.

The fixture (``tests/fixtures/d2/``) was written by ``benchmarks/compare_d2.py --write-fixture``
with detectron2 0.6: a narrow R18-FPN Mask R-CNN (3 classes) saved as a model-zoo ``.pkl``, a
uint8 image, and detectron2's eval outputs on it.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pcna_seg.config import load_config
from pcna_seg.config.defaults import get_default_config
from pcna_seg.errors import WeightsError
from pcna_seg.modeling import build_model, load_weights
from pcna_seg.modeling.d2_weights import convert_d2_state, read_d2_pickle

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "d2"


def fixture_cfg(*extra: str):
    meta = json.loads((FIX / "r18n.json").read_text())
    return load_config(ROOT / meta["pcna_seg_config"], [*meta["pcna_seg_opts"], *extra])


def _run(model, image01: torch.Tensor):
    with torch.no_grad():
        images, _ = model.transform([image01])
        props, _ = model.rpn(images, model.backbone(images.tensors))
        out = model([image01])[0]
    return props[0], out


def test_fixture_reproduces_detectron2_outputs():
    torch.manual_seed(0)
    model = build_model(fixture_cfg()).eval()
    report = load_weights(model, FIX / "r18n.pkl", strict=True)
    assert report.source_format == "detectron2"
    assert not report.reinitialised and not report.missing and not report.adapted
    exp = np.load(FIX / "r18n_expected.npz")
    image = torch.from_numpy(exp["image_u8"]).permute(2, 0, 1).float() / 255.0
    props, out = _run(model, image)
    ref_p = torch.from_numpy(exp["proposals"])
    assert props.shape == ref_p.shape
    assert torch.allclose(props[:100], ref_p[:100], atol=1e-2)  # the best proposals, in order
    nearest = (props[None] - ref_p[:, None]).abs().amax(dim=2).amin(dim=1)
    assert bool((nearest < 1e-2).all())  # every proposal (the tail may swap near-equal scores)
    assert out["boxes"].shape == (len(exp["boxes"]), 4)
    assert torch.equal(out["labels"] - 1, torch.from_numpy(exp["classes"]))
    assert torch.allclose(out["boxes"], torch.from_numpy(exp["boxes"]), atol=1e-2)
    assert torch.allclose(out["scores"], torch.from_numpy(exp["scores"]), atol=1e-4)
    assert torch.allclose(out["masks"], torch.from_numpy(exp["mask_probs"]), atol=1e-3)


def test_fixture_needs_the_detectron2_settings():
    """With torchvision's rounded anchors and unaligned pooling the same file gives other boxes."""
    exp = np.load(FIX / "r18n_expected.npz")
    image = torch.from_numpy(exp["image_u8"]).permute(2, 0, 1).float() / 255.0
    cfg = fixture_cfg(
        "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlign", "MODEL.ROI_MASK_HEAD.POOLER_TYPE", "ROIAlign"
    )
    model = build_model(cfg).eval()
    load_weights(model, FIX / "r18n.pkl", strict=True)
    _, out = _run(model, image)
    n = min(len(out["scores"]), len(exp["scores"]))
    assert not torch.allclose(out["scores"][:n], torch.from_numpy(exp["scores"][:n]), atol=1e-4)


def test_d2_pth_and_pkl_load_the_same(tmp_path):
    state = read_d2_pickle(FIX / "r18n.pkl")
    pth = tmp_path / "model_final.pth"
    torch.save({"model": state, "iteration": 9}, pth)
    a, b = build_model(fixture_cfg()), build_model(fixture_cfg())
    ra, rb = load_weights(a, FIX / "r18n.pkl", strict=True), load_weights(b, pth, strict=True)
    assert rb.source_format == "detectron2" and ra.loaded == rb.loaded
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_other_class_count_reinitialises_class_layers_only():
    model = build_model(fixture_cfg("MODEL.ROI_HEADS.NUM_CLASSES", "1"))
    report = load_weights(model, FIX / "r18n.pkl")
    assert sorted(report.reinitialised) == sorted(
        f"roi_heads.{n}.{leaf}"
        for n in ("box_predictor.cls_score", "box_predictor.bbox_pred", "mask_predictor.mask_fcn_logits")
        for leaf in ("weight", "bias")
    )
    assert report.shapes["roi_heads.box_predictor.cls_score.weight"] == ((4, 64), (2, 64))
    assert "roi_heads.box_head.fc6.weight" in report.loaded
    with pytest.raises(WeightsError, match="re-initialised"):
        load_weights(
            build_model(fixture_cfg("MODEL.ROI_HEADS.NUM_CLASSES", "1")), FIX / "r18n.pkl", strict=True
        )


def test_class_rows_background_first_and_zero_background_deltas():
    model = build_model(fixture_cfg())
    d2 = read_d2_pickle(FIX / "r18n.pkl")
    tv, unmapped = convert_d2_state(d2, model)
    assert not unmapped
    cls_w, cls_b = (
        d2["roi_heads.box_predictor.cls_score.weight"],
        d2["roi_heads.box_predictor.cls_score.bias"],
    )
    assert torch.equal(tv["roi_heads.box_predictor.cls_score.weight"][0], cls_w[3])  # d2 background last
    assert torch.equal(tv["roi_heads.box_predictor.cls_score.bias"][1:], cls_b[:3])
    box = tv["roi_heads.box_predictor.bbox_pred.weight"]
    assert box.shape[0] == 16 and not box[:4].any()  # no background deltas in detectron2
    assert torch.equal(box[4:], d2["roi_heads.box_predictor.bbox_pred.weight"])
    mask = tv["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    assert mask.shape[0] == 4 and not mask[0].any()
    assert torch.equal(tv["roi_heads.mask_head.0.0.weight"], d2["roi_heads.mask_head.mask_fcn1.weight"])
    assert torch.equal(tv["backbone.body.layer2.0.downsample.1.running_var"],
                       d2["backbone.bottom_up.res3.0.shortcut.norm.running_var"])  # fmt: skip
    assert torch.equal(tv["backbone.fpn.inner_blocks.3.0.weight"], d2["backbone.fpn_lateral5.weight"])


def test_class_agnostic_heads_repeat_for_every_class():
    model = build_model(fixture_cfg())
    d2 = read_d2_pickle(FIX / "r18n.pkl")
    d2["roi_heads.box_predictor.bbox_pred.weight"] = d2["roi_heads.box_predictor.bbox_pred.weight"][:4]
    d2["roi_heads.mask_head.predictor.weight"] = d2["roi_heads.mask_head.predictor.weight"][:1]
    tv, _ = convert_d2_state(d2, model)
    box = tv["roi_heads.box_predictor.bbox_pred.weight"]
    assert box.shape[0] == 16 and all(torch.equal(box[4 * k : 4 * k + 4], box[:4]) for k in range(4))
    assert tv["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape[0] == 4


def test_rpn_rows_follow_torchvision_anchor_order():
    """torchvision's generator with 2 sizes x 3 ratios: rows permuted so each anchor keeps its shape."""
    cfg = fixture_cfg(
        "MODEL.ANCHOR_GENERATOR.NAME",
        "TorchvisionAnchorGenerator",
        "MODEL.ANCHOR_GENERATOR.SIZES",
        "[[16, 24], [32, 48], [64, 96], [128, 192], [256, 384]]",
    )
    model = build_model(cfg)
    gen = model.rpn.anchor_generator
    a = model.rpn.head.cls_logits.out_channels
    d2 = {
        "proposal_generator.rpn_head.objectness_logits.weight": torch.arange(a, dtype=torch.float32)
        .view(a, 1, 1, 1)
        .expand(a, 32, 1, 1)
        .clone(),
        "proposal_generator.rpn_head.anchor_deltas.bias": torch.arange(4 * a, dtype=torch.float32),
    }
    tv, _ = convert_d2_state(d2, model)
    src = tv["rpn.head.cls_logits.weight"][:, 0, 0, 0].long()  # detectron2 row of each torchvision anchor
    sizes, ratios = gen.sizes[0], gen.aspect_ratios[0]
    d2_shape = [(s, r) for s in sizes for r in ratios]  # detectron2: size-major
    tv_cells = gen.generate_anchors(sizes, ratios)
    for p, j in enumerate(src.tolist()):
        s, r = d2_shape[j]
        w = (s * s / r) ** 0.5
        assert abs(float(tv_cells[p, 2] - tv_cells[p, 0]) - w) <= 1.0  # torchvision rounds to pixels
        assert abs(float(tv_cells[p, 3] - tv_cells[p, 1]) - r * w) <= 1.0
    deltas = tv["rpn.head.bbox_pred.bias"].view(a, 4)
    assert torch.equal(deltas[:, 0].long(), src * 4)


def test_exact_anchor_generator_is_unrounded_size_major():
    cfg = get_default_config()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64]] * 5
    gen = build_model(cfg).rpn.anchor_generator
    cells = gen.cell_anchors[0]
    w0 = (32 * 32 / 0.5) ** 0.5  # size 32, ratio 0.5: 45.2548..., not rounded
    assert cells.shape == (6, 4)
    assert torch.allclose(cells[0], torch.tensor([-w0 / 2, -0.25 * w0, w0 / 2, 0.25 * w0]))
    assert torch.allclose(cells[3, 2] - cells[3, 0], torch.tensor(64 / 0.5**0.5))  # 2nd size starts at 3
    # nominal strides: a 224-px-high input has a 4-row pool level (7 rows at P5) spaced 64, not 224 // 4
    from torchvision.models.detection.image_list import ImageList

    images = ImageList(torch.zeros(1, 3, 224, 256), [(224, 256)])
    feats = [torch.zeros(1, 1, h, w) for h, w in ((56, 64), (28, 32), (14, 16), (7, 8), (4, 4))]
    pool = gen(images, feats)[0][-4 * 4 * 6 :].view(4, 4, 6, 4)
    centres_y = (pool[:, 0, 0, 1] + pool[:, 0, 0, 3]) / 2
    assert torch.allclose(centres_y, torch.tensor([0.0, 64, 128, 192]))


def test_stride_in_1x1_moves_the_bottleneck_stride():
    cfg = get_default_config()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = True
    body = build_model(cfg).backbone.body
    assert body.layer2[0].conv1.stride == (2, 2) and body.layer2[0].conv2.stride == (1, 1)
    assert body.layer1[0].conv1.stride == (1, 1) and body.layer4[0].downsample[0].stride == (2, 2)
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    body = build_model(cfg).backbone.body
    assert body.layer2[0].conv1.stride == (1, 1) and body.layer2[0].conv2.stride == (2, 2)


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"backbone.bottom_up.stem.conv1.weight": Evil()}}))
    with pytest.raises(WeightsError, match="not allowed"):
        read_d2_pickle(path)
    assert not (tmp_path / "pwned").exists()


def test_msra_imagenet_caffe2_names_load_into_the_backbone(tmp_path):
    """An MSRA ImageNet R-50 ``.pkl`` (Caffe2 names, affine-only BN) fills the whole ResNet."""
    cfg = get_default_config()
    cfg.MODEL.DEVICE, cfg.MODEL.RESNETS.STRIDE_IN_1X1 = "cpu", True
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    arr = lambda t: rng.standard_normal(tuple(t.shape)).astype(np.float32)  # noqa: E731
    body = model.backbone.body
    blobs = {"conv1_w": arr(body.conv1.weight), "res_conv1_bn_s": arr(body.bn1.weight),
             "res_conv1_bn_b": arr(body.bn1.bias), "fc1000_w": np.zeros((1000, 2048), np.float32),
             "conv1_w_momentum": np.zeros(1, np.float32)}  # fmt: skip
    for s in range(2, 6):
        for b, block in enumerate(getattr(body, f"layer{s - 1}")):
            for c2, conv, bn in (("2a", "conv1", "bn1"), ("2b", "conv2", "bn2"), ("2c", "conv3", "bn3")):
                blobs[f"res{s}_{b}_branch{c2}_w"] = arr(getattr(block, conv).weight)
                blobs[f"res{s}_{b}_branch{c2}_bn_s"] = arr(getattr(block, bn).weight)
                blobs[f"res{s}_{b}_branch{c2}_bn_b"] = arr(getattr(block, bn).bias)
            if block.downsample is not None:
                blobs[f"res{s}_{b}_branch1_w"] = arr(block.downsample[0].weight)
                blobs[f"res{s}_{b}_branch1_bn_s"] = arr(block.downsample[1].weight)
                blobs[f"res{s}_{b}_branch1_bn_b"] = arr(block.downsample[1].bias)
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs}))
    report = load_weights(model, path)
    assert not any(n.startswith("backbone.body.") for n in report.missing)
    assert torch.equal(body.layer3[2].conv2.weight, torch.from_numpy(blobs["res4_2_branch2b_w"]))
    assert torch.equal(body.layer2[0].downsample[1].weight, torch.from_numpy(blobs["res3_0_branch1_bn_s"]))
    assert bool((body.layer4[0].bn3.running_var == 1).all() and (body.bn1.running_mean == 0).all())


def test_caffe2_names_and_broken_files_are_clear_errors(tmp_path):
    c2 = tmp_path / "e2e_mask_rcnn.pkl"
    c2.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.zeros((64, 3, 7, 7), np.float32),
                                           "fpn_inner_res5_2_sum_w": np.zeros(1, np.float32)}}))  # fmt: skip
    with pytest.raises(WeightsError, match="Caffe2 .*fpn_inner_res5_2_sum_w"):
        read_d2_pickle(c2)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(WeightsError, match="bad.pkl"):
        load_weights(build_model(fixture_cfg()), bad)
    with pytest.raises(WeightsError, match="not found"):
        load_weights(build_model(fixture_cfg()), tmp_path / "missing.pkl")


def test_pixel_statistics_in_the_file_are_checked(caplog):
    model = build_model(fixture_cfg())  # PIXEL_MEAN = [103.53, 116.28, 123.675] / 255
    d2 = read_d2_pickle(FIX / "r18n.pkl")
    d2["pixel_mean"] = torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)
    with caplog.at_level("WARNING"):
        convert_d2_state(d2, model)
    assert "pixel_mean" not in caplog.text
    d2["pixel_std"] = torch.tensor([57.375, 57.12, 58.395]).view(3, 1, 1)  # torchvision-style weights
    with caplog.at_level("WARNING"):
        tv, _ = convert_d2_state(d2, model)
    assert "pixel_std [57.375, 57.12, 58.395]" in caplog.text and "MODEL.PIXEL_STD" in caplog.text
    assert "pixel_std" not in tv and "pixel_mean" not in tv
