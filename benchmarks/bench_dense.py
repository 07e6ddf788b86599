#!/usr/bin/env python
"""A dense microscope field on CPU: seconds and peak memory to predict 2,000+ nuclei.

One synthetic 2048×2048 field (a jittered grid of ~2,100 touching nuclei, 3 channels) goes
through Mask R-CNN R50-FPN with random weights, score threshold 0 and 2,000 detections per
image, RPN and box NMS thresholds 1.0 (nothing suppressed), so every engine returns exactly
2,000 instances and its mask head and mask pasting do the same work. Each engine runs in its
own subprocess (one warm-up pass excluded from the time); printed: seconds per field, peak RSS,
instances returned, and the pcna_seg / detectron2 ratios.

- pcna_seg: the model, then the one postprocess (each mask pasted into its own box crop at the
  original size) and the label image the prediction tool writes;
- detectron2 (``--d2-python``: an interpreter where ``import detectron2`` works, e.g. a
  separate environment where you built it): its model, whose postprocess pastes every mask
  into a full-size (N, H, W) bool tensor.

For context the script also prints what a full-size float paste (torchvision's default,
(N, 1, H, W) float32) would need for this field; that path is not run.

    python benchmarks/bench_dense.py [--size 2048] [--d2-python /path/to/venv/bin/python]
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
DETS = 2000
PIXEL_MEAN = [103.53, 116.28, 123.675]
PIXEL_STD = [57.375, 57.12, 58.395]


def make_field(size: int, seed: int = 0):
    """(3, size, size) float32 image in [0, 255] with ~size²/1900 touching discs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    step = 44
    yy, xx = np.mgrid[0:size, 0:size]
    img = rng.normal(20, 5, (size, size)).astype(np.float32)
    n = 0
    for cy in range(step // 2, size, step):
        for cx in range(step // 2, size, step):
            y, x = cy + rng.uniform(-5, 5), cx + rng.uniform(-5, 5)
            r = rng.uniform(14, 20)
            y0, y1, x0, x1 = (
                int(max(0, y - r)),
                int(min(size, y + r + 1)),
                int(max(0, x - r)),
                int(min(size, x + r + 1)),
            )
            disc = (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2 <= r * r
            img[y0:y1, x0:x1][disc] = rng.uniform(120, 250)
            n += 1
    return np.repeat(np.clip(img, 0, 255)[None], 3, axis=0), n


def run_pcna_seg(size: int) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from pcna_seg.config import load_config
    from pcna_seg.modeling import build_model
    from pcna_seg.modeling.postprocess import to_prediction

    cfg = load_config(
        ROOT / "configs/Base-MaskRCNN-FPN.yaml",
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.ROI_HEADS.NUM_CLASSES",
            "1",
            "TEST.DETECTIONS_PER_IMAGE",
            str(DETS),
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "0.0",
            "MODEL.ROI_HEADS.NMS_THRESH_TEST",
            "1.0",
            "MODEL.RPN.NMS_THRESH",
            "1.0",
            "MODEL.RPN.PRE_NMS_TOPK_TEST",
            "3000",
            "MODEL.RPN.POST_NMS_TOPK_TEST",
            "3000",
        ],  # fmt: skip
        freeze=False,
    )
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = PIXEL_MEAN, PIXEL_STD
    model = build_model(cfg).eval()
    image, _ = make_field(size)
    tensor = torch.from_numpy(image)
    out = {}

    def step() -> None:
        with torch.no_grad():
            raw = model([tensor])[0]
        pred = to_prediction(raw, (size, size), (size, size), ["nucleus"])
        out["n"] = len(pred)
        out["labels_max"] = int(pred.to_label_image().max())

    small = torch.from_numpy(image[:, :256, :256].copy())
    with torch.no_grad():
        model([small])  # warm-up on a small crop: allocator and kernels, not the dense field
    t0 = time.perf_counter()
    step()
    return {"seconds": time.perf_counter() - t0, "instances": out["n"]}


def run_detectron2(size: int) -> dict:
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    name = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
    try:
        from detectron2 import model_zoo

        config_file = model_zoo.get_config_file(name)
    except Exception:  # a source checkout has the configs beside the package
        import detectron2

        config_file = str(Path(detectron2.__file__).resolve().parents[1] / "configs" / name)
    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    cfg.TEST.DETECTIONS_PER_IMAGE = DETS
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 1.0
    cfg.MODEL.RPN.NMS_THRESH = 1.0
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 3000
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 3000
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = PIXEL_MEAN, PIXEL_STD
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = size, size
    model = build_model(cfg).eval()
    image, _ = make_field(size)
    tensor = torch.from_numpy(image)
    with torch.no_grad():
        model([{"image": tensor[:, :256, :256].contiguous(), "height": 256, "width": 256}])
    t0 = time.perf_counter()
    with torch.no_grad():
        inst = model([{"image": tensor, "height": size, "width": size}])[0]["instances"]
    return {"seconds": time.perf_counter() - t0, "instances": len(inst)}


def child(engine: str, size: int) -> dict:
    import torch

    torch.manual_seed(0)
    out = run_pcna_seg(size) if engine == "pcna_seg" else run_detectron2(size)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--d2-python", default=sys.executable, help="interpreter where detectron2 imports")
    p.add_argument("--child", choices=["pcna_seg", "detectron2"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.size)))
        return 0
    engines = {"pcna_seg": sys.executable}
    if subprocess.run([args.d2_python, "-c", "import detectron2"], capture_output=True).returncode == 0:
        engines["detectron2"] = args.d2_python
    else:
        print(f"detectron2 does not import with {args.d2_python}: comparison skipped")
    _, n_nuclei = make_field(args.size)
    rows = {}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for name, python in engines.items():
        proc = subprocess.run(
            [python, __file__, "--child", name, "--size", str(args.size)],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode:
            print(f"{name}: failed\n{proc.stderr[-3000:]}")
            continue
        rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    threads = os.environ.get("OMP_NUM_THREADS", "-")
    print(
        f"\nDense field {args.size}x{args.size}, {n_nuclei} nuclei drawn, {DETS} detections, R50-FPN random "
        f"weights, CPU, OMP_NUM_THREADS={threads}"
    )
    print(f"{'engine':<12}{'s/field':>10}{'instances':>11}{'peak RSS MB':>13}")
    for name, r in rows.items():
        print(f"{name:<12}{r['seconds']:>10.1f}{r['instances']:>11}{r['peak_rss_mb']:>13.0f}")
    full_gb = DETS * args.size * args.size * 4 / 2**30
    print(
        f"(a full-size float32 paste of {DETS} masks, torchvision's default, would need {full_gb:.1f} GB: "
        "not run)"
    )
    if len(rows) == 2:
        a, b = rows["pcna_seg"], rows["detectron2"]
        print(
            f"\npcna_seg / detectron2: time ratio {a['seconds'] / b['seconds']:.2f}, "
            f"memory ratio {a['peak_rss_mb'] / b['peak_rss_mb']:.2f}"
        )
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
