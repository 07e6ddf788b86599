#!/usr/bin/env python
"""detectron2 weights in pcna_seg's torchvision Mask R-CNN: the same numbers as detectron2?

Run with a Python where ``import detectron2`` works (detectron2 built from source in a
separate environment) and pcna_seg is importable (this script puts the repository on
``sys.path``):

    /path/to/d2env/bin/python benchmarks/compare_d2.py [--models r18n r18 r50] [--write-fixture]

For each model: detectron2 builds a Mask R-CNN (R18n = ResNet-18 at an eighth of its width, FPN 32,
the test fixture; R18; R50 with the stride in the 1x1 convs as detectron2's model zoo), random
weights from a fixed seed made realistic (FrozenBN statistics calibrated on the image, final
layers scaled so scores, class-specific box deltas and masks differ visibly), saved as a
model-zoo-style ``.pkl`` (``{"model": {name: numpy array}, "__author__": ...}``) and reloaded by
detectron2's own checkpointer as a check of the file. pcna_seg builds the same architecture
from ``configs/Base-MaskRCNN-FPN-detectron2-weights.yaml``, loads the ``.pkl`` (converted,
strict: every parameter from the file), and both run in eval mode on one synthetic image.

Printed table (one row per model): proposals (count each, how many of detectron2's have a
pcna_seg proposal within 0.01 px, the largest such distance, and the first 100 compared in
order), final detections (count each, matched by class and box IoU), max |Δ| of matched boxes
(pixels) and scores, the share of equal classes, mask-head probabilities (max |Δ|) and the
IoU of the masks pasted at image size, minimum and mean: both engines' probabilities pasted
by pcna_seg's box-crop paste (the conversion), and detectron2's own paste vs pcna_seg's (the
two postprocesses differ: detectron2 samples the box grid at pixel centres, pcna_seg resizes
the 28 x 28 map to the integer box as torchvision does; random-weight masks are speckled, so
this column is a lower bound of what trained, smooth masks give).
``--write-fixture`` writes R18n's ``.pkl``, image and detectron2 outputs to ``tests/fixtures/d2/``
for ``tests/modeling/test_d2_weights.py``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURE = ROOT / "tests" / "fixtures" / "d2"
NUM_CLASSES, SEED, IMAGE_HW = 3, 0, (200, 248)
MODELS = {  # name: (depth, stem/res2 width, FPN width, box FC, mask conv, stride in 1x1)
    "r18n": (18, 8, 32, 64, 32, False),
    "r18": (18, 64, 256, 1024, 256, False),
    "r50": (50, 64, 256, 1024, 256, True),
}


def make_image(hw: tuple[int, int] = IMAGE_HW, seed: int = SEED) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1], multiples of 1/255: blurred blobs on noise, channels differ."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    h, w = hw
    img = np.zeros((h, w, 3), np.float32)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(25):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, 20)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.float32)
        img += blob[..., None] * rng.uniform(0.3, 1.0, 3)
    img = ndimage.gaussian_filter(img, (1.5, 1.5, 0)) + rng.normal(0, 0.05, img.shape)
    return (np.round(np.clip(img, 0, 1) * 255) / 255).astype(np.float32)


def d2_cfg(name: str):
    """detectron2 config of model ``name`` (Base-RCNN-FPN keys, set here, CPU)."""
    from detectron2.config import get_cfg

    depth, width, fpn, fc, conv, s1x1 = MODELS[name]
    cfg = get_cfg()
    m = cfg.MODEL
    m.DEVICE, m.MASK_ON, m.META_ARCHITECTURE = "cpu", True, "GeneralizedRCNN"
    m.BACKBONE.NAME = "build_resnet_fpn_backbone"
    m.RESNETS.DEPTH, m.RESNETS.STRIDE_IN_1X1 = depth, s1x1
    m.RESNETS.RES2_OUT_CHANNELS = 64 if depth == 18 else 256
    m.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    m.FPN.IN_FEATURES, m.FPN.OUT_CHANNELS = ["res2", "res3", "res4", "res5"], fpn
    m.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    m.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    m.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    m.RPN.PRE_NMS_TOPK_TEST, m.RPN.POST_NMS_TOPK_TEST = 1000, 1000
    m.ROI_HEADS.NAME, m.ROI_HEADS.NUM_CLASSES = "StandardROIHeads", NUM_CLASSES
    m.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    m.ROI_BOX_HEAD.NAME, m.ROI_BOX_HEAD.NUM_FC, m.ROI_BOX_HEAD.FC_DIM = "FastRCNNConvFCHead", 2, fc
    m.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    m.ROI_MASK_HEAD.NAME, m.ROI_MASK_HEAD.NUM_CONV = "MaskRCNNConvUpsampleHead", 4
    m.ROI_MASK_HEAD.CONV_DIM, m.ROI_MASK_HEAD.POOLER_RESOLUTION = conv, 14
    return cfg


def build_d2(name: str):
    """detectron2 GeneralizedRCNN for ``name``; R18n's narrow ResNet is made from d2's own blocks."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import GeneralizedRCNN, build_model
    from detectron2.modeling.backbone import FPN, BasicStem, ResNet
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool
    from detectron2.modeling.backbone.resnet import BasicBlock
    from detectron2.modeling.proposal_generator import build_proposal_generator
    from detectron2.modeling.roi_heads import build_roi_heads

    cfg = d2_cfg(name)
    torch.manual_seed(SEED)
    if name != "r18n":
        return cfg, build_model(cfg).eval()
    width, norm = MODELS[name][1], "FrozenBN"
    stages, in_ch = [], width
    for i in range(4):
        out = width * 2**i
        stages.append(
            ResNet.make_stage(
                BasicBlock,
                2,
                in_channels=in_ch,
                out_channels=out,
                stride_per_block=[1 + (i > 0), 1],
                norm=norm,
            )
        )
        in_ch = out
    bottom = ResNet(BasicStem(3, width, norm=norm), stages, out_features=["res2", "res3", "res4", "res5"])
    backbone = FPN(
        bottom_up=bottom,
        in_features=["res2", "res3", "res4", "res5"],
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        top_block=LastLevelMaxPool(),
    )
    shapes: dict[str, ShapeSpec] = backbone.output_shape()
    model = GeneralizedRCNN(
        backbone=backbone,
        proposal_generator=build_proposal_generator(cfg, shapes),
        roi_heads=build_roi_heads(cfg, shapes),
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
        input_format="BGR",
    )
    return cfg, model.eval()


def realistic_weights(model, image: torch.Tensor) -> None:
    """Calibrate FrozenBN statistics on ``image`` and scale the final layers (see module doc)."""
    from detectron2.layers import FrozenBatchNorm2d

    gen = torch.Generator().manual_seed(SEED + 1)
    hooks = []

    def calibrate(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, FrozenBatchNorm2d):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=gen) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.1)
                hooks.append(mod.register_forward_pre_hook(calibrate))
            elif getattr(mod, "bias", None) is not None and isinstance(mod.bias, torch.nn.Parameter):
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.05)
        model([{"image": image}])
        for h in hooks:
            h.remove()
        targets = {  # final layer → wanted output standard deviation
            model.proposal_generator.rpn_head.objectness_logits: 2.0,
            model.proposal_generator.rpn_head.anchor_deltas: 0.2,
            model.roi_heads.box_predictor.cls_score: 1.5,
            model.roi_heads.box_predictor.bbox_pred: 0.3,
            model.roi_heads.mask_head.predictor: 3.0,
        }
        for _ in range(2):
            stds: dict = {}

            def measure(mod, inputs, output, stds=stds):  # returns None: output unchanged
                stds.setdefault(mod, float(output.std()))

            hooks = [layer.register_forward_hook(measure) for layer in targets]
            model([{"image": image}])
            for h in hooks:
                h.remove()
            for layer, want in targets.items():
                layer.weight.mul_(want / max(stds.get(layer, want), 1e-6))
        cls = model.roi_heads.box_predictor.cls_score
        cls.bias.copy_(torch.randn(cls.bias.shape, generator=gen))


def save_pkl(model, path: Path) -> None:
    """Model-zoo-style pickle: {"model": {name: float32 numpy}, "__author__", "matching_heuristics"}."""
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    obj = {"model": arrays, "__author__": "pcna_seg benchmarks/compare_d2.py", "matching_heuristics": False}
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=4)


def run_d2(model, image: torch.Tensor) -> dict:
    """detectron2 eval: proposals (P, 4), boxes (N, 4), scores, classes (0-based), mask probs
    (N, 1, 28, 28), pasted masks (N, H, W) bool."""
    from detectron2.modeling.postprocessing import detector_postprocess

    with torch.no_grad():
        batched = [{"image": image}]
        images = model.preprocess_image(batched)
        feats = model.backbone(images.tensor)
        props, _ = model.proposal_generator(images, feats, None)
        inst, _ = model.roi_heads(images, feats, props, None)
        inst = inst[0]
        pasted = detector_postprocess(inst, *image.shape[1:])
    return {
        "proposals": props[0].proposal_boxes.tensor.numpy(),
        "boxes": inst.pred_boxes.tensor.numpy(),
        "scores": inst.scores.numpy(),
        "classes": inst.pred_classes.numpy(),
        "mask_probs": inst.pred_masks.numpy(),
        "masks": pasted.pred_masks.numpy().astype(bool),
    }


BASE_CONFIG = "configs/Base-MaskRCNN-FPN-detectron2-weights.yaml"


def pcna_cfg(name: str):
    """pcna_seg config of model ``name`` on the detectron2-weights base config."""
    from pcna_seg.config import load_config

    return load_config(ROOT / BASE_CONFIG, pcna_opts(name))


def pcna_opts(name: str) -> list[str]:
    """``KEY VALUE`` overrides of the base config for model ``name``."""
    depth, width, fpn, fc, conv, s1x1 = MODELS[name]
    opts = [
        "MODEL.DEVICE",
        "cpu",
        "MODEL.RESNETS.DEPTH",
        str(depth),
        "MODEL.RESNETS.STRIDE_IN_1X1",
        str(s1x1),
    ]
    opts += ["MODEL.FPN.OUT_CHANNELS", str(fpn), "MODEL.ROI_BOX_HEAD.FC_DIM", str(fc)]
    opts += ["MODEL.ROI_MASK_HEAD.CONV_DIM", str(conv), "MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_CLASSES)]
    opts += ["MODEL.ROI_HEADS.ONE_CLASS_PER_BOX", "False"]  # detectron2's per-class candidates
    if width != 64:  # narrow R18 (detectron2's R50/101 stem is 64 wide too)
        opts += ["MODEL.RESNETS.STEM_OUT_CHANNELS", str(width), "MODEL.RESNETS.RES2_OUT_CHANNELS", str(width)]
    return opts


def run_pcna(cfg, pkl: Path, image01: torch.Tensor) -> dict:
    """pcna_seg eval on the [0, 1] image: same keys as :func:`run_d2` (classes 0-based)."""
    from pcna_seg.modeling import build_model, load_weights

    model = build_model(cfg).eval()
    load_weights(model, pkl, strict=True)
    return run_pcna_model(model, image01)


def run_pcna_model(model, image01: torch.Tensor) -> dict:
    """Proposals and detections of a loaded pcna_seg model (masks pasted by the one postprocess)."""
    from pcna_seg.modeling.postprocess import mask_paste_of

    with torch.no_grad():
        images, _ = model.transform([image01])
        feats = model.backbone(images.tensors)
        props, _ = model.rpn(images, feats)
        out = model([image01])[0]
    return {
        "proposals": props[0].numpy(),
        "boxes": out["boxes"].numpy(),
        "scores": out["scores"].numpy(),
        "classes": out["labels"].numpy() - 1,
        "mask_probs": out["masks"].numpy(),
        "masks": paste(out["masks"], out["boxes"], tuple(image01.shape[1:]), mask_paste_of(model)),
    }


def paste(mask_probs, boxes, hw: tuple[int, int], mode: str = "torchvision") -> np.ndarray:
    """pcna_seg's box-crop paste of (N, 1, M, M) probabilities → (N, H, W) bool (``mode``: the
    torchvision rule, or "aligned", the one models with ROIAlignV2 mask pooling use)."""
    from pcna_seg.modeling.postprocess import paste_crops

    mask_probs, boxes = torch.as_tensor(mask_probs), torch.as_tensor(boxes)
    dense = np.zeros((len(boxes), *hw), bool)
    for i, crop in enumerate(paste_crops(mask_probs, boxes, hw, mode=mode)):
        if crop is not None:
            m, y0, x0 = crop
            dense[i, y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]] = m
    return dense


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) XYXY → (N, M) IoU."""
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def compare(ref: dict, got: dict) -> dict:
    """Numbers of one table row: ``ref`` = detectron2, ``got`` = pcna_seg (see module doc)."""
    rp, gp = ref["proposals"], got["proposals"]
    # order-free: each detectron2 proposal's nearest pcna_seg proposal (max |coordinate difference|);
    # near-equal objectness scores may swap places in the two lists
    near = (
        np.abs(rp[:, None, :] - gp[None, :, :]).max(axis=2).min(axis=1) if len(rp) and len(gp) else rp[:0, 0]
    )
    row = {"props": f"{len(rp)}/{len(gp)}/{int((near < 0.01).sum())}"}
    row["prop_dmax"] = float(near.max()) if len(near) else 0.0
    k = min(len(rp), len(gp), 100)
    row["prop_top_dmax"] = float(np.abs(rp[:k] - gp[:k]).max()) if k else 0.0
    iou = box_iou(ref["boxes"], got["boxes"]) if len(ref["boxes"]) and len(got["boxes"]) else np.zeros((0, 0))
    same_cls = ref["classes"][:, None] == got["classes"][None, :]
    pairs = []
    for i in range(iou.shape[0]):  # greedy: each detectron2 detection → best same-class pcna_seg one
        cand = np.where(same_cls[i], iou[i], -1)
        j = int(cand.argmax()) if cand.size else -1
        if j >= 0 and cand[j] > 0.5 and j not in {p[1] for p in pairs}:
            pairs.append((i, j))
    ri, gj = np.array([p[0] for p in pairs], int), np.array([p[1] for p in pairs], int)
    row["dets"] = f"{len(ref['boxes'])}/{len(got['boxes'])}/{len(pairs)}"
    row["box_dmax"] = float(np.abs(ref["boxes"][ri] - got["boxes"][gj]).max()) if pairs else float("nan")
    row["score_dmax"] = float(np.abs(ref["scores"][ri] - got["scores"][gj]).max()) if pairs else float("nan")
    order = len(ref["classes"]) == len(got["classes"]) and bool(np.all(ref["classes"] == got["classes"]))
    row["same_order"] = order
    row["prob_dmax"] = (
        float(np.abs(ref["mask_probs"][ri] - got["mask_probs"][gj]).max()) if pairs else float("nan")
    )
    hw = ref["masks"].shape[1:]
    # detectron2's probabilities, pcna_seg's paste (the rule the converted model uses)
    ref_same = paste(ref["mask_probs"], ref["boxes"], hw, got.get("mask_paste", "aligned"))
    for tag, ref_masks in (("same", ref_same), ("d2", ref["masks"])):
        ious = [_mask_iou(ref_masks[i], got["masks"][j]) for i, j in pairs]
        row[f"iou_{tag}_min"] = float(min(ious)) if ious else float("nan")
        row[f"iou_{tag}_mean"] = float(np.mean(ious)) if ious else float("nan")
    return row


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def table(rows: dict[str, dict]) -> str:
    """Markdown table of the compare() rows."""
    head = (
        "| model | proposals d2/pcna/within 0.01 px | proposal max abs diff, nearest (px) | "
        "top-100 proposals in order, max abs diff (px) | detections d2/pcna/matched | "
        "box max abs diff (px) | score max abs diff | same order | mask prob max abs diff | "
        "mask IoU, same paste: min / mean | mask IoU, d2 paste vs pcna paste: min / mean |"
    )
    lines = [head, "|" + "---|" * 11]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['props']} | {r['prop_dmax']:.2e} | {r['prop_top_dmax']:.2e} | {r['dets']} | "
            f"{r['box_dmax']:.2e} | "
            f"{r['score_dmax']:.2e} | {r['same_order']} | {r['prob_dmax']:.2e} | "
            f"{r['iou_same_min']:.4f} / {r['iou_same_mean']:.4f} | "
            f"{r['iou_d2_min']:.4f} / {r['iou_d2_mean']:.4f} |"
        )
    return "\n".join(lines)


def paste_disc_ious() -> list[float]:
    """IoU of detectron2's paste vs pcna_seg's for one smooth disc-shaped 28 x 28 mask on three
    boxes (small, medium, large): the two postprocesses alone, no weights involved."""
    from detectron2.layers.mask_ops import paste_masks_in_image

    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    disc = (((yy - 13.5) ** 2 + (xx - 13.5) ** 2) < 12**2).float()
    probs = torch.sigmoid((disc - 0.5) * 8)[None, None].repeat(3, 1, 1, 1)
    boxes = torch.tensor([[5.5, 5.5, 14.2, 16.8], [10.3, 20.7, 40.2, 52.9], [100.0, 50.0, 180.0, 170.0]])
    ref = paste_masks_in_image(probs[:, 0], boxes, IMAGE_HW).numpy()
    return [
        _mask_iou(a, b)
        for mode in ("torchvision", "aligned")
        for a, b in zip(ref, paste(probs, boxes, IMAGE_HW, mode))
    ]


def write_fixture(name: str, pkl: Path, image01: np.ndarray, ref: dict) -> None:
    """``tests/fixtures/d2/``: <name>.pkl, <name>_expected.npz (image + detectron2 outputs), .json."""
    import detectron2

    FIXTURE.mkdir(parents=True, exist_ok=True)
    (FIXTURE / f"{name}.pkl").write_bytes(pkl.read_bytes())
    np.savez_compressed(
        FIXTURE / f"{name}_expected.npz",
        image_u8=np.round(image01 * 255).astype(np.uint8),
        **{k: v for k, v in ref.items() if k != "masks"},
    )
    np.savez_compressed(  # detectron2's own pasted masks, bit-packed along x
        FIXTURE / f"{name}_pasted.npz",
        packed=np.packbits(ref["masks"], axis=-1),
        shape=np.array(ref["masks"].shape),
    )
    depth, width, fpn, fc, conv, s1x1 = MODELS[name]
    meta = {
        "made_by": "benchmarks/compare_d2.py --write-fixture",
        "detectron2": detectron2.__version__,
        "torch": torch.__version__,
        "model": {"depth": depth, "width": width, "fpn": fpn, "fc_dim": fc, "mask_conv": conv},
        "pcna_seg_config": BASE_CONFIG,
        "pcna_seg_opts": pcna_opts(name),
        "num_classes": NUM_CLASSES,
        "stride_in_1x1": s1x1,
        "classes": "0-based; boxes XYXY in input pixels; mask_probs (N, 1, 28, 28) of the predicted class",
    }
    (FIXTURE / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--write-fixture", action="store_true", help="write r18n's fixture to tests/fixtures/d2")
    args = p.parse_args()
    torch.set_num_threads(1)
    from detectron2.checkpoint import DetectionCheckpointer

    image01 = make_image()
    x01 = torch.from_numpy(image01).permute(2, 0, 1).contiguous()
    x255 = x01 * 255.0
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            _, d2 = build_d2(name)
            realistic_weights(d2, x255)
            ref = run_d2(d2, x255)
            pkl = Path(tmp) / f"{name}.pkl"
            save_pkl(d2, pkl)
            _, again = build_d2(name)
            DetectionCheckpointer(again).load(str(pkl))  # the file reads back in detectron2
            same = run_d2(again.eval(), x255)
            assert np.array_equal(same["boxes"], ref["boxes"]), "detectron2 does not reproduce from the .pkl"
            got = run_pcna(pcna_cfg(name), pkl, x01)
            rows[name] = compare(ref, got)
            print(f"{name}: {json.dumps(rows[name])}", file=sys.stderr)
            if args.write_fixture and name == "r18n":
                write_fixture(name, pkl, image01, ref)
    import detectron2

    print(f"detectron2 {detectron2.__version__}, torch {torch.__version__}, image {IMAGE_HW}, "
          f"{NUM_CLASSES} classes, CPU, 1 thread")  # fmt: skip
    print(table(rows))
    ious = [f"{v:.3f}" for v in paste_disc_ious()]
    print(
        "paste only (a smooth disc mask on a 9x11, 30x32 and 80x120 px box), d2 vs pcna_seg IoU: "
        f"torchvision rule {', '.join(ious[:3])}; aligned rule {', '.join(ious[3:])}"
    )


if __name__ == "__main__":
    main()
