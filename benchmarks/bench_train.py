#!/usr/bin/env python
"""Training-step benchmark: seconds per iteration and peak memory, one subprocess per setting.

Settings (CPU): the quick stage-3 config (R18-FPN-64, 256², batch 2) and R50-FPN (base config,
512², batch 2). Peak host memory is the child's ``ru_maxrss`` (tracemalloc does not see torch's
allocations). With CUDA: R50-FPN 512² batch 2 with and without AMP, images/s and
``torch.cuda.max_memory_allocated``. detectron2 is measured only when importable.

    python benchmarks/bench_train.py [--iters 3] [--warmup 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {
    "quick_R18_256_b2": ("configs/quick_schedules/quick_stage3_pcna.yaml", 256, 2, "cpu", False),
    "R50_FPN_512_b2": ("configs/Base-MaskRCNN-FPN.yaml", 512, 2, "cpu", False),
    "cuda_R50_FPN_512_b2": ("configs/Base-MaskRCNN-FPN.yaml", 512, 2, "cuda", False),
    "cuda_R50_FPN_512_b2_amp": ("configs/Base-MaskRCNN-FPN.yaml", 512, 2, "cuda", True),
}


def _batch(size: int, n: int, channels: int, num_classes: int, seed: int = 0):
    import numpy as np
    import torch

    from pcna_seg.data.structures import labels_to_masks, mask_to_bbox
    from pcna_seg.data.synthetic.nuclei import make_pcna_frame

    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(n):
        frame = make_pcna_frame(rng, size, size, n_nuclei=int(30 * (size / 256) ** 2))
        img = frame.channels["pcna"].astype(np.float32)
        img = (img - img.min()) / max(float(img.max() - img.min()), 1.0)
        _, masks = labels_to_masks(frame.labels)
        boxes = [mask_to_bbox(m) for m in masks]
        images.append(torch.from_numpy(np.repeat(img[None], channels, axis=0)))
        targets.append(
            {
                "boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32),
                "labels": torch.from_numpy(rng.integers(1, num_classes + 1, len(masks))).long(),
                "masks": torch.from_numpy(np.stack(masks).astype(np.uint8)),
            }
        )
    return images, targets


def child(name: str, iters: int, warmup: int) -> dict:
    import torch

    from pcna_seg.config import load_config
    from pcna_seg.engine.lr_scheduler import build_optimizer
    from pcna_seg.modeling import build_model

    cfg_file, size, batch, device, amp = SETTINGS[name]
    cfg = load_config(ROOT / cfg_file, ["MODEL.DEVICE", device], freeze=False)
    model = build_model(cfg)
    model.train()
    opt = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    images, targets = _batch(size, batch, len(cfg.INPUT.CHANNELS), cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    images = [i.to(device) for i in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    times = []
    for i in range(warmup + iters):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, enabled=amp):
            loss = sum(model(images, targets).values())
        opt.zero_grad()
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    out = {
        "s_per_iter": sum(times) / len(times),
        "images_per_s": batch * len(times) / sum(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device == "cuda":
        out["cuda_max_alloc_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--child", choices=sorted(SETTINGS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.iters, args.warmup)))
        return 0
    import torch

    names = [n for n in SETTINGS if not n.startswith("cuda")]
    if torch.cuda.is_available():
        names += [n for n in SETTINGS if n.startswith("cuda")]
    else:
        print("CUDA not available: GPU/AMP settings skipped")
    try:
        import detectron2  # noqa: F401

        print("detectron2 is importable, but its settings are not wired in this benchmark yet: skipped")
    except ImportError:
        print("detectron2 not importable: detectron2 comparison skipped")
    rows = {}
    for name in names:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            name,
            "--iters",
            str(args.iters),
            "--warmup",
            str(args.warmup),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"{name}: failed\n{proc.stderr[-2000:]}")
            continue
        rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    if not rows:
        return 1
    ref = rows.get("quick_R18_256_b2") or next(iter(rows.values()))
    print(
        f"\n{'setting':<26}{'s/iter':>9}{'img/s':>8}{'peak RSS MB':>13}{'CUDA MB':>9}"
        f"{'time ratio':>12}{'mem ratio':>11}"
    )
    for name, r in rows.items():
        cuda = f"{r['cuda_max_alloc_mb']:.0f}" if "cuda_max_alloc_mb" in r else "-"
        print(
            f"{name:<26}{r['s_per_iter']:>9.3f}{r['images_per_s']:>8.2f}{r['peak_rss_mb']:>13.0f}{cuda:>9}"
            f"{r['s_per_iter'] / ref['s_per_iter']:>12.2f}{r['peak_rss_mb'] / ref['peak_rss_mb']:>11.2f}"
        )
    print("(ratios relative to the quick config; absolute times depend on the machine and its load)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
