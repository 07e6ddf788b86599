"""``MODEL.ENGINE detectron2``: detectron2's Mask R-CNN behind the project's model interface.

Skipped where detectron2 is not importable (it is optional and has no usable registry
package); run with a Python where it is, e.g. ``/path/to/d2env/bin/python -m pytest
tests/modeling/test_d2_engine.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (optional engine); run where it is")

from pcna_seg.config import load_config  # noqa: E402
from pcna_seg.data import catalog  # noqa: E402
from pcna_seg.data.mapper import DatasetMapper  # noqa: E402
from pcna_seg.errors import WeightsError  # noqa: E402
from pcna_seg.modeling import build_model, load_weights  # noqa: E402
from pcna_seg.modeling.d2_adapter import detectron2_status  # noqa: E402
from pcna_seg.modeling.d2_engine import register_datasets  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "d2"
LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


def cfg_for(engine: str, *extra: str):
    meta = json.loads((FIX / "r18n.json").read_text())
    opts = [o for o in meta["pcna_seg_opts"]]
    if engine == "detectron2":  # detectron2 builds R18 at full width only
        i = opts.index("MODEL.RESNETS.STEM_OUT_CHANNELS")
        del opts[i : i + 4]
    return load_config(ROOT / meta["pcna_seg_config"], [*opts, "MODEL.ENGINE", engine, *extra])


def _targets(h=128, w=128):
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 10:30, 12:40] = 1
    masks[1, 60:90, 50:80] = 1
    return [{"boxes": torch.tensor([[12.0, 10, 40, 30], [50, 60, 80, 90]]), "labels": torch.tensor([1, 3]),
             "masks": masks}]  # fmt: skip


def _record(tmp_path, h=96, w=120):
    """A stage-3-like record: PCNA + DIC TIFFs of a synthetic frame, masks as RLE."""
    import tifffile

    from pcna_seg.data.structures import labels_to_masks, make_annotation
    from pcna_seg.data.synthetic.nuclei import DEFAULT_PHASES, make_pcna_frame

    frame = make_pcna_frame(np.random.default_rng(3), h, w, n_nuclei=6)
    paths = {c: tmp_path / f"{c}.tif" for c in ("pcna", "dic")}
    for c, p in paths.items():
        tifffile.imwrite(p, frame.channels[c])
    ids, masks = labels_to_masks(frame.labels)
    anns = [make_annotation(m, DEFAULT_PHASES.index(frame.phases[int(i)])) for i, m in zip(ids, masks)]
    return {"file_name": str(paths["pcna"]), "height": h, "width": w, "image_id": 0, "annotations": anns,
            "channels": {c: str(p) for c, p in paths.items()}}  # fmt: skip


def test_info_reports_version():
    import detectron2

    assert detectron2_status().startswith(f"importable ({detectron2.__version__}")


def test_engine_trains_and_predicts_with_the_project_interface():
    torch.manual_seed(0)
    model = build_model(cfg_for("detectron2", "MODEL.ROI_HEADS.ONE_CLASS_PER_BOX", "True"))
    assert model.engine == "detectron2" and model.cfg_num_classes == 3
    model.train()
    losses = model([torch.rand(3, 128, 128)], _targets())
    assert set(losses) == LOSSES and all(torch.isfinite(v) for v in losses.values())
    assert "fast_rcnn/cls_accuracy" in model.last_scalars  # detectron2's own training scalars, kept
    sum(losses.values()).backward()
    assert model.roi_heads.box_predictor.cls_score.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 100, 140)])[0]
    n = len(out["boxes"])
    assert n > 0 and out["masks"].shape == (n, 1, 28, 28) and out["class_probs"].shape == (n, 4)
    assert torch.allclose(out["class_probs"].sum(1), torch.ones(n), atol=1e-5)
    assert torch.equal(out["class_probs"][:, 1:].argmax(1) + 1, out["labels"])  # background first
    assert torch.allclose(out["class_probs"].gather(1, out["labels"][:, None])[:, 0], out["scores"])


def test_engine_equals_stock_detectron2():
    """The engine's model (subclassed RoI heads / output layer) and stock detectron2 built from the
    same translated config and weights give the same detections; the engine adds class_probs."""
    from detectron2.modeling import build_model as d2_build

    from pcna_seg.modeling.d2_engine import to_d2_config

    cfg = cfg_for("detectron2", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.2")
    torch.manual_seed(0)
    engine = build_model(cfg).eval()
    with torch.no_grad():  # decisive scores: spread the random classifier
        engine.roi_heads.box_predictor.cls_score.weight.mul_(300.0)
    d2cfg = to_d2_config(cfg)
    d2cfg.MODEL.META_ARCHITECTURE, d2cfg.MODEL.ROI_HEADS.NAME = "GeneralizedRCNN", "StandardROIHeads"
    stock = d2_build(d2cfg).eval()
    stock.load_state_dict(engine.state_dict())
    image = torch.rand(3, 100, 140)
    with torch.no_grad():
        ref = stock.inference([{"image": image}], do_postprocess=False)[0]
        out = engine([image])[0]
    assert len(ref) > 0
    assert torch.equal(out["labels"] - 1, ref.pred_classes)
    assert torch.allclose(out["boxes"], ref.pred_boxes.tensor) and torch.allclose(out["scores"], ref.scores)
    assert torch.allclose(out["masks"], ref.pred_masks)
    assert torch.allclose(out["class_probs"].gather(1, out["labels"][:, None])[:, 0], out["scores"])


def test_engine_loads_detectron2_checkpoints_with_head_reinit(tmp_path):
    torch.manual_seed(0)
    src = build_model(cfg_for("detectron2"))
    path = tmp_path / "model_final.pth"
    torch.save({"model": src.state_dict(), "iteration": 3}, path)
    dst = build_model(cfg_for("detectron2"))
    report = load_weights(dst, path, strict=True)
    assert report.source_format == "detectron2" and not report.missing
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    tv = build_model(cfg_for("torchvision"))
    tv_path = tmp_path / "tv.pth"
    torch.save({"model": tv.state_dict()}, tv_path)
    with pytest.raises(WeightsError, match="torchvision parameter names"):
        load_weights(dst, tv_path)
    other = build_model(cfg_for("detectron2", "MODEL.ROI_HEADS.NUM_CLASSES", "1"))
    report = load_weights(other, path)
    assert sorted(report.reinitialised) == sorted(
        f"roi_heads.{n}.{leaf}"
        for n in ("box_predictor.cls_score", "box_predictor.bbox_pred", "mask_head.predictor")
        for leaf in ("weight", "bias")
    )


def test_both_engines_receive_identical_tensors(tmp_path):
    """One record through the project's mapper (same seed) → both engines see the same
    normalised, padded image and the same instances."""
    rec = _record(tmp_path)
    seen: dict[str, dict] = {}
    for engine in ("torchvision", "detectron2"):
        cfg = cfg_for(engine, "INPUT.CHANNELS", "['pcna', 'dic', 'otsu_mask']", "SEED", "7")
        out = DatasetMapper.from_config(cfg, is_train=True)(rec)
        target = {k: out["instances"][k] for k in ("boxes", "labels", "masks")}
        model = build_model(cfg).train()
        got: dict = {"mapped": out["image"].clone()}
        if engine == "torchvision":
            tf = model.transform

            def keep(mod, args, result, got=got):
                got["image"], got["boxes"] = result[0].tensors, result[1][0]["boxes"]
                got["classes"] = result[1][0]["labels"] - 1

            tf.register_forward_hook(keep)
        else:
            pre = model.preprocess_image

            def preprocess(batched, pre=pre, got=got):
                images = pre(batched)
                got["image"] = images.tensor
                inst = batched[0]["instances"]
                got["boxes"], got["classes"] = inst.gt_boxes.tensor, inst.gt_classes
                return images

            model.preprocess_image = preprocess
        model([out["image"]], [target])
        seen[engine] = got
    tv, d2 = seen["torchvision"], seen["detectron2"]
    assert torch.equal(tv["mapped"], d2["mapped"])
    assert tv["image"].shape == d2["image"].shape  # both pad to a multiple of 32
    assert torch.allclose(tv["image"], d2["image"], atol=1e-4)
    assert torch.equal(tv["boxes"], d2["boxes"]) and torch.equal(tv["classes"], d2["classes"])


def test_datasets_register_into_detectron2_lazily():
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    calls = []
    rec = {"file_name": "a.tif", "height": 8, "width": 8, "image_id": 1,
           "annotations": [{"bbox": [1, 1, 3, 3], "bbox_mode": "XYWH_ABS", "category_id": 0, "iscrowd": 0,
                            "segmentation": [[1, 1, 4, 1, 4, 4]]}]}  # fmt: skip
    catalog.register_dataset("pcna_d2_lazy", lambda: calls.append(1) or [rec], {"thing_classes": ["nucleus"]})
    try:
        assert register_datasets(["pcna_d2_lazy"]) == ["pcna_d2_lazy"]
        assert not calls  # nothing loaded at registration
        recs = DatasetCatalog.get("pcna_d2_lazy")
        assert calls and recs[0]["annotations"][0]["bbox_mode"] == BoxMode.XYWH_ABS
        assert MetadataCatalog.get("pcna_d2_lazy").thing_classes == ["nucleus"]
        assert register_datasets(["pcna_d2_lazy"]) == []  # already there
    finally:
        DatasetCatalog.remove("pcna_d2_lazy")
        MetadataCatalog.remove("pcna_d2_lazy")
