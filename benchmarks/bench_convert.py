"""Benchmark: DSB2018 conversion, project converter vs. a naive single-process loop.

Generates (untimed) a DSB-layout folder of ``--n-images`` images (sides 256–512 px, ~30 nuclei
each), then times:

(a) ``pcna_seg.data.converters.dsb2018.convert`` with ``--workers`` (default: its own default);
(b) a naive baseline: one sample at a time, ``cv2.imread`` of every mask, pycocotools encode of
    the full mask, box from ``np.where``, one ``json.dump`` — single process.

Prints images, nuclei, seconds and images/s for each, and the speed-up ratio.

    python benchmarks/bench_convert.py [--n-images 670] [--workers N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from pcna_seg.data.converters.base import default_workers
from pcna_seg.data.converters.dsb2018 import convert
from pcna_seg.data.synthetic.write_dsb2018 import write


def naive_convert(root: Path, out: Path) -> int:
    """The straightforward loop; returns the number of nuclei written."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for sample in sorted(p for p in root.iterdir() if p.is_dir()):
        sid = sample.name
        img = cv2.imread(str(sample / "images" / f"{sid}.png"), cv2.IMREAD_UNCHANGED)
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(out / "images" / f"{sid}.png"), img)
        h, w = img.shape
        images.append({"id": sid, "file_name": f"images/{sid}.png", "height": h, "width": w})
        for mpath in sorted((sample / "masks").glob("*.png")):
            m = (cv2.imread(str(mpath), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)
            rle = mask_utils.encode(np.asfortranarray(m))
            ys, xs = np.where(m)
            box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": sid,
                    "category_id": 1,
                    "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                    "bbox": box,
                    "area": int(m.sum()),
                    "iscrowd": 0,
                }
            )
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "nucleus"}]}
    with open(out / "annotations.json", "w") as fh:
        json.dump(coco, fh)
    return len(anns)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-images", type=int, default=670)
    ap.add_argument("--workers", type=int, default=None, help="converter workers (default: its default)")
    ap.add_argument("--gen-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--n-nuclei", type=int, default=30)
    ap.add_argument("--workdir", type=Path, default=None, help="keep data here (default: temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", action="store_true", help="reuse data already generated in --workdir")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_convert_"))
    src = work / "src"
    try:
        t0 = time.perf_counter()
        reuse = args.reuse and (src / "stage1_train_labels.csv").is_file()
        if src.exists() and not reuse:
            shutil.rmtree(src)
        if not reuse:
            write(
                src,
                seed=args.seed,
                n_images=args.n_images,
                height=(256, 512),
                width=(256, 512),
                n_nuclei=args.n_nuclei,
                workers=args.gen_workers,
                keep_labels=False,
                progress=True,
            )
            print(f"generated {args.n_images} images in {time.perf_counter() - t0:.1f} s (untimed)")
        n_images = sum(1 for p in (src / "stage1_train").iterdir() if p.is_dir())
        rows = []
        for name in ("project", "baseline"):
            out = work / f"out_{name}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            if name == "project":
                card = convert(src, out, workers=args.workers, progress=False)
                n_nuc = card["instances"]
            else:
                n_nuc = naive_convert(src / "stage1_train", out)
            rows.append((name, n_nuc, time.perf_counter() - t0))
        workers = args.workers if args.workers is not None else default_workers()
        print(f"\nDSB2018 conversion, {n_images} images, cpu_count={os.cpu_count()}")
        print(f"{'converter':<26}{'images':>8}{'nuclei':>9}{'seconds':>10}{'images/s':>10}")
        for name, n_nuc, sec in rows:
            label = f"project (workers={workers})" if name == "project" else "naive baseline (1 proc)"
            print(f"{label:<26}{n_images:>8}{n_nuc:>9}{sec:>10.2f}{n_images / sec:>10.1f}")
        print(f"\nspeed-up project / baseline: {rows[1][2] / rows[0][2]:.2f}x")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
