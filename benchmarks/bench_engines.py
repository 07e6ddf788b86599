#!/usr/bin/env python
"""pcna_seg's torchvision engine vs detectron2: Mask R-CNN R50-FPN, same inputs, same machine.

Both engines get the same synthetic 512×512 nuclei images (batch 2, ~120 nuclei each, 3
channels) with no resizing, random initial weights, the same RoI / RPN sampling sizes and the
same test-time limits (100 detections per image, score threshold 0 so both engines return the
full 100 and their mask heads do the same work). Inference includes pasting the masks at the
image size (detectron2's postprocess; pcna_seg's box-crop postprocess) and is timed first, on
the fresh random weights; training uses a tiny learning rate so random weights cannot
diverge. Each engine runs in its own subprocess (one warm-up step, then timed steps) so
imports and allocator state do not mix. Printed:
training s/iter, inference s/image, peak RSS, and the pcna_seg / detectron2 ratios.

detectron2 is not a dependency: the comparison runs when ``import detectron2`` works in the
Python given by ``--d2-python`` (default: this interpreter), e.g. a separate environment where
you built detectron2 from source.

    python benchmarks/bench_engines.py [--iters 3] [--d2-python /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZE, BATCH, NUM_CLASSES = 512, 2, 3
PIXEL_MEAN = [103.53, 116.28, 123.675]  # inputs are 0-255; unit-variance-ish scaling for random weights
PIXEL_STD = [57.375, 57.12, 58.395]
LR = 1e-4  # small: random weights must not diverge (a collapsed RPN would make steps cheaper)


def make_inputs(seed: int = 0) -> list[dict]:
    """BATCH images of SIZE²: image (3, H, W) float32 in [0, 255], boxes XYXY, 0-based classes, masks."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from pcna_seg.data.structures import labels_to_masks, mask_to_bbox
    from pcna_seg.data.synthetic.nuclei import make_pcna_frame

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(BATCH):
        frame = make_pcna_frame(rng, SIZE, SIZE, n_nuclei=120)
        img = frame.channels["pcna"].astype(np.float32)
        img = 255.0 * (img - img.min()) / max(float(img.max() - img.min()), 1.0)
        _, masks = labels_to_masks(frame.labels)
        boxes = [(x, y, x + w, y + h) for x, y, w, h in (mask_to_bbox(m) for m in masks)]
        out.append(
            {
                "image": np.repeat(img[None], 3, axis=0),
                "boxes": np.asarray(boxes, np.float32),
                "classes": rng.integers(0, NUM_CLASSES, len(masks)),
                "masks": np.stack(masks).astype(np.uint8),
            }
        )
    return out


def _time(step, iters: int) -> float:
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - t0) / iters


def run_pcna_seg(iters: int) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from pcna_seg.config import load_config
    from pcna_seg.engine.lr_scheduler import build_optimizer
    from pcna_seg.modeling import build_model

    cfg = load_config(
        ROOT / "configs/Base-MaskRCNN-FPN.yaml",
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.ROI_HEADS.NUM_CLASSES",
            str(NUM_CLASSES),
            "TEST.DETECTIONS_PER_IMAGE",
            "100",
        ],
        freeze=False,
    )
    cfg.MODEL.PIXEL_MEAN = PIXEL_MEAN  # the same input scaling in both engines
    cfg.MODEL.PIXEL_STD = PIXEL_STD
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    data = make_inputs()
    images = [torch.from_numpy(d["image"]) for d in data]
    targets = [
        {
            "boxes": torch.from_numpy(d["boxes"]),
            "labels": torch.from_numpy(d["classes"] + 1).long(),
            "masks": torch.from_numpy(d["masks"]),
        }
        for d in data
    ]

    def train_step() -> None:
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    dets = []

    from pcna_seg.modeling.postprocess import to_prediction

    def infer_step() -> None:  # model + the one postprocess (masks pasted at image size), as detectron2
        with torch.no_grad():
            outs = model(images)
        preds = [to_prediction(o, (SIZE, SIZE), (SIZE, SIZE), ["a", "b", "c"]) for o in outs]
        dets.append(sum(len(p) for p in preds))

    model.eval()
    infer = _time(infer_step, iters) / BATCH
    model.train()
    train = _time(train_step, iters)
    return {"train_s_per_iter": train, "infer_s_per_image": infer, "detections": dets[-1] / BATCH}


def run_detectron2(iters: int) -> dict:
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    name = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
    try:
        from detectron2 import model_zoo

        config_file = model_zoo.get_config_file(name)
    except Exception:  # model_zoo needs pkg_resources; a source checkout has the file beside the package
        import detectron2

        config_file = str(Path(detectron2.__file__).resolve().parents[1] / "configs" / name)
    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.TEST.DETECTIONS_PER_IMAGE = 100
    cfg.SOLVER.BASE_LR = LR
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.PIXEL_MEAN = PIXEL_MEAN
    cfg.MODEL.PIXEL_STD = PIXEL_STD
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    data = make_inputs()
    batch = []
    for d in data:
        inst = Instances((SIZE, SIZE))
        inst.gt_boxes = Boxes(torch.from_numpy(d["boxes"]))
        inst.gt_classes = torch.from_numpy(d["classes"]).long()
        inst.gt_masks = BitMasks(torch.from_numpy(d["masks"]).bool())
        batch.append(
            {"image": torch.from_numpy(d["image"]), "instances": inst, "height": SIZE, "width": SIZE}
        )

    def train_step() -> None:
        loss = sum(model(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    dets = []
    test_batch = [{"image": b["image"], "height": SIZE, "width": SIZE} for b in batch]

    def infer_step() -> None:
        with torch.no_grad():
            dets.append(sum(len(o["instances"]) for o in model(test_batch)))

    model.eval()
    infer = _time(infer_step, iters) / BATCH
    model.train()
    with EventStorage(0):  # detectron2's losses log into an event storage
        train = _time(train_step, iters)
    return {"train_s_per_iter": train, "infer_s_per_image": infer, "detections": dets[-1] / BATCH}


def child(engine: str, iters: int) -> dict:
    import torch

    torch.manual_seed(0)
    out = run_pcna_seg(iters) if engine == "pcna_seg" else run_detectron2(iters)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["torch"] = torch.__version__
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--d2-python", default=sys.executable, help="interpreter where detectron2 imports")
    p.add_argument("--child", choices=["pcna_seg", "detectron2"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.iters)))
        return 0
    probe = subprocess.run([args.d2_python, "-c", "import detectron2"], capture_output=True)
    engines = {"pcna_seg": sys.executable}
    if probe.returncode == 0:
        engines["detectron2"] = args.d2_python
    else:
        print(f"detectron2 does not import with {args.d2_python}: comparison skipped")
    rows = {}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for name, python in engines.items():
        cmd = [python, __file__, "--child", name, "--iters", str(args.iters)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            print(f"{name}: failed\n{proc.stderr[-3000:]}")
            continue
        rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    threads = os.environ.get("OMP_NUM_THREADS", "-")
    print(f"\nMask R-CNN R50-FPN, {SIZE}x{SIZE}, batch {BATCH}, CPU, OMP_NUM_THREADS={threads}")
    print(f"{'engine':<12}{'train s/iter':>14}{'infer s/img':>13}{'dets/img':>10}{'peak RSS MB':>13}  torch")
    for name, r in rows.items():
        print(
            f"{name:<12}{r['train_s_per_iter']:>14.2f}{r['infer_s_per_image']:>13.2f}{r['detections']:>10.0f}"
            f"{r['peak_rss_mb']:>13.0f}  {r['torch']}"
        )
    if len(rows) == 2:
        a, b = rows["pcna_seg"], rows["detectron2"]
        ratio = a["train_s_per_iter"] / b["train_s_per_iter"]
        print(
            f"\npcna_seg / detectron2: training time ratio {ratio:.2f} "
            f"(target <= 1.0), inference speed-up {b['infer_s_per_image'] / a['infer_s_per_image']:.2f}x "
            f"(target >= 1.5), memory ratio {a['peak_rss_mb'] / b['peak_rss_mb']:.2f}"
        )
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
