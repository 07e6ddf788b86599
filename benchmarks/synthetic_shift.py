#!/usr/bin/env python
"""Does a model trained on synthetic nuclei survive a shift in acquisition? Clean vs realistic.

Quick stage-1 models (``configs/quick_schedules/quick_stage1_kaggle.yaml``: R18-FPN, grey
input, Base-quick's augmentation) are trained for ``--iters`` iterations on synthetic
DSB2018-layout folders (converted with the real ``dsb2018`` converter):

- ``clean``: the clean style (uniform brightness, one size, sharp, black background);
- ``clean-noaug``: the same data with ``INPUT.AUGMENT`` and the scale jitter off (what the
  quick configs did before);
- ``realistic``: the acquisition simulator with its default :class:`Realism` ranges.

Every model, and a classical baseline (Otsu threshold + distance-transform watershed,
scikit-image), then predicts held-out 8-bit PNGs (as written on disk, colour ones included)
of two families no model saw: ``clean`` (new seed) and ``shifted`` (realistic style with
ranges outside the realistic training ranges: wider brightness spread, more and stronger
defocus, denser, lower SNR, brighter background). Scores: cell-level F1 and PQ at IoU 0.5
and the DSB2018 score (mean over IoU 0.5-0.95), micro-averaged over images.

    python benchmarks/synthetic_shift.py [--iters 300] [--models clean,realistic] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pcna_seg.data.converters import get_converter  # noqa: E402
from pcna_seg.data.image_io import read_image, to_gray  # noqa: E402
from pcna_seg.data.synthetic.realism import SHIFTED_REALISM  # noqa: E402
from pcna_seg.data.synthetic.write_dsb2018 import write  # noqa: E402
from pcna_seg.evaluation.cell_metrics import evaluate_frame, summarize_frames  # noqa: E402

CFG = str(ROOT / "configs/quick_schedules/quick_stage1_kaggle.yaml")
SIZE = (192, 320)  # image height/width range, px
N_NUCLEI = 30  # nuclei of a clean image (realistic: scaled by density and size)
SHIFTED = SHIFTED_REALISM  # the style the default ranges do not cover
TRAIN = {  # model name -> (style, extra options)
    "clean-noaug": ("clean", ["INPUT.AUGMENT.ENABLED", "False", "INPUT.SCALE.TRAIN_JITTER", "(1.0, 1.0)"]),
    "clean": ("clean", []),
    "realistic": ("realistic", []),
}


def train(work: Path, name: str, iters: int, n_images: int) -> Path:
    """Write + convert the model's training family, train, return model_final.pth."""
    from pcna_seg.engine.trainer import run_train_net

    style, extra = TRAIN[name]
    raw, ds = work / "raw" / name, work / "datasets" / f"shift_{name.replace('-', '_')}"
    write(raw, seed=0, n_images=n_images, height=SIZE, width=SIZE, n_nuclei=N_NUCLEI, style=style)
    get_converter("dsb2018")(raw, ds, overwrite=True, progress=False)
    out = work / "models" / name
    opts = [
        "DATASETS.ROOT", str(work / "datasets"), "DATASETS.TRAIN", f"('{ds.name}_train',)",
        "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({int(iters * 0.8)},)", "SOLVER.CHECKPOINT_PERIOD",
        str(iters), "DATALOADER.NUM_WORKERS", "1", "OUTPUT_DIR", str(out), *extra,
    ]  # fmt: skip
    t0 = time.perf_counter()
    run_train_net(CFG, opts, overwrite=True)
    print(f"trained {name}: {iters} iterations in {time.perf_counter() - t0:.0f} s", flush=True)
    return out / "model_final.pth"


def test_family(
    work: Path, name: str, style, seed: int, n_images: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Held-out (grey image as the model reads it, true labels) pairs, read back from the PNGs."""
    raw = work / "raw" / f"test_{name}"
    gt = write(raw, seed=seed, n_images=n_images, height=SIZE, width=SIZE, n_nuclei=N_NUCLEI, style=style)
    out = []
    for g in gt.images:
        img = read_image(raw / "stage1_train" / g.key / "images" / f"{g.key}.png")
        out.append((to_gray(img), g.labels))
    return out


def otsu_watershed(gray: np.ndarray) -> np.ndarray:
    """Classical baseline: (H, W) image → (H, W) int32 labels. Light-background (colour /
    brightfield) images are inverted first; Otsu threshold, holes filled, tiny objects
    removed, markers = maxima of the smoothed distance transform, watershed. A threshold that
    separates nothing but noise (classes < 3 background sd apart) gives no nuclei."""
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    img = gray.astype(np.float32)
    if img.max() <= img.min():
        return np.zeros(img.shape, np.int32)
    t = threshold_otsu(img)
    fg = img > t
    if fg.mean() > 0.5:  # more "foreground" than background: dark nuclei on a light field
        fg = img < t
    if abs(img[fg].mean() - img[~fg].mean()) < 3 * img[~fg].std():  # no object, only noise
        return np.zeros(img.shape, np.int32)
    fg = ndimage.binary_fill_holes(ndimage.binary_opening(fg, iterations=1))
    comp, n = ndimage.label(fg)
    if n == 0:
        return np.zeros(img.shape, np.int32)
    sizes = ndimage.sum(fg, comp, np.arange(1, n + 1))
    fg &= np.isin(comp, np.flatnonzero(sizes >= 12) + 1)
    dist = ndimage.gaussian_filter(ndimage.distance_transform_edt(fg), 1.0)
    comp, n = ndimage.label(fg)
    if n == 0:
        return np.zeros(img.shape, np.int32)
    radius = float(np.median(ndimage.maximum(dist, comp, np.arange(1, n + 1))))
    peaks = peak_local_max(dist, min_distance=max(3, int(0.7 * radius)), labels=comp, exclude_border=False)
    markers = np.zeros(img.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=fg).astype(np.int32)


def score(pairs, predict) -> dict:
    return summarize_frames([evaluate_frame(truth, predict(gray)) for gray, truth in pairs])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument(
        "--models", default="clean-noaug,clean,realistic", help=f"comma list of {', '.join(TRAIN)}"
    )
    p.add_argument("--train-images", type=int, default=24)
    p.add_argument("--test-images", type=int, default=12)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pcna_seg.data.pipeline").setLevel(logging.ERROR)  # per-image size warnings
    from pcna_seg.inference import Predictor, load_predict_config

    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in TRAIN]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {', '.join(TRAIN)}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="synthetic_shift_"))
    tests = {
        "clean": test_family(work, "clean", "clean", 98, args.test_images),
        "shifted": test_family(work, "shifted", SHIFTED, 99, args.test_images),
    }
    rows = []
    for name, pairs in tests.items():
        rows.append(("otsu+watershed", name, score(pairs, otsu_watershed)))
    for model in models:
        w = train(work, model, args.iters, args.train_images)
        opts = ["MODEL.ROI_HEADS.NMS_CLASS_AGNOSTIC", "True", "TEST.DETECTIONS_PER_IMAGE", "1000"]
        pred = Predictor(load_predict_config(w, None, opts), w)
        for name, pairs in tests.items():
            rows.append(
                (model, name, score(pairs, lambda g, p=pred: p.predict_arrays({"gray": g}).to_label_image()))
            )
    print(
        f"\nHeld-out synthetic DSB2018-style PNGs, {args.test_images} per family; "
        f"{args.iters} iterations per model"
    )
    print(
        "{:<16} {:<9} {:>6} {:>6} {:>6} {:>6} {:>6}".format(
            "train", "test", "F1", "PQ", "DSB", "true", "pred"
        )
    )
    for model, name, m in rows:
        print(
            f"{model:<16} {name:<9} {m['f1@0.5']:>6.3f} {m['pq@0.5']:>6.3f} {m['dsb_score']:>6.3f}"
            f" {m['n_gt']:>6} {m['n_pred']:>6}"
        )
    print(f"\nwork folder: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
