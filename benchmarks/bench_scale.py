#!/usr/bin/env python
"""Does a nucleus keep its size? Fixed pixel scale vs detectron2's short-edge resize.

Two quick stage-1 models (R18-FPN, grey input) are trained for ``--iters`` iterations on the
same synthetic DSB2018-layout data (512 × 512 images, ~120 nuclei each, converted with the
real registrar):

- ``fixed``: ``INPUT.SCALE.MODE fixed`` at native pixels (the project's default), 256-px crops;
- ``short_edge``: detectron2's resize as the quick configs had it (``MIN_SIZE_TRAIN (256,)``,
  ``MAX_SIZE_TRAIN 256``), i.e. every 512-px training image silently shrunk by 2, 128-px crops.

Both then predict held-out fields of 256², 512² and 1024² px (same nucleus size and density)
whole and in 256-px tiles (overlap 64), and are scored with the cell-level matching
(F1 at IoU > 0.5). Prediction allows 1,500 RPN proposals and 1,000 detections per image (the
quick config's 300 proposals would cap a dense 1024² field). The short-edge model is
predicted with its own test size and with the "don't shrink my image" setting
``MIN_SIZE_TEST`` = the field's short edge.

    python benchmarks/bench_scale.py [--iters 300] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pcna_seg.data.converters import get_converter  # noqa: E402
from pcna_seg.data.synthetic.nuclei import make_nuclei_image  # noqa: E402
from pcna_seg.data.synthetic.write_dsb2018 import write  # noqa: E402
from pcna_seg.evaluation.cell_metrics import evaluate_frame  # noqa: E402

CFG = str(ROOT / "configs/quick_schedules/quick_stage1_kaggle.yaml")
SHORT_EDGE = [
    "INPUT.SCALE.MODE", "short_edge", "INPUT.MIN_SIZE_TRAIN", "(256,)", "INPUT.MAX_SIZE_TRAIN", "256",
    "INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "256",
]  # fmt: skip
DENSITY = 120 / 512**2  # nuclei per pixel, as in the training images
# predict_net's defaults (score >= 0.5, class-agnostic NMS), and room for a dense 1024² field
# (480 nuclei: more than the quick config's 300 proposals)
PREDICT = [
    "MODEL.ROI_HEADS.NMS_CLASS_AGNOSTIC", "True", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.5",
    "TEST.DETECTIONS_PER_IMAGE", "1000", "MODEL.RPN.PRE_NMS_TOPK_TEST", "3000",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "1500",
]  # fmt: skip


def train(work: Path, name: str, iters: int, extra: list[str]) -> Path:
    from pcna_seg.engine.trainer import run_train_net

    out = work / name
    opts = [
        "DATASETS.ROOT", str(work / "datasets"), "DATASETS.TRAIN", "('bscale_train',)", "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({int(iters * 0.8)},)", "SOLVER.CHECKPOINT_PERIOD",
        str(iters), "DATALOADER.NUM_WORKERS", "1", "OUTPUT_DIR", str(out), *extra,
    ]  # fmt: skip
    t0 = time.perf_counter()
    run_train_net(CFG, opts, overwrite=True)
    print(f"trained {name}: {iters} iterations in {time.perf_counter() - t0:.0f} s")
    return out / "model_final.pth"


def fields(seed: int = 7) -> list[tuple[str, dict[str, np.ndarray], np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for side in (256, 512, 1024):
        frame = make_nuclei_image(rng, side, side, n_nuclei=int(DENSITY * side * side))
        out.append((f"{side}x{side}", {"gray": frame.channels["gray"]}, frame.labels))
    return out


def f1(truth: np.ndarray, pred) -> tuple[float, int]:
    r = evaluate_frame(truth, pred.to_label_image())
    tp, fp, fn = int(r.tp[0]), int(r.fp[0]), int(r.fn[0])
    return 2 * tp / max(2 * tp + fp + fn, 1), r.n_pred


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument(
        "--skip-training", action="store_true", help="predict with the models already in --workdir"
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from pcna_seg.inference import Predictor, load_predict_config, predict_tiled

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    if args.skip_training:
        weights = {name: work / name / "model_final.pth" for name in ("fixed", "short_edge")}
    else:
        write(work / "raw", seed=0, n_images=16, height=512, width=512, n_nuclei=120)
        get_converter("dsb2018")(
            work / "raw", work / "datasets/bscale", seed=0, progress=False, overwrite=True
        )
        weights = {
            "fixed": train(work, "fixed", args.iters, []),
            "short_edge": train(work, "short_edge", args.iters, SHORT_EDGE),
        }
    test = fields()
    rows = []
    for model, w in weights.items():
        settings = [("its config", [])]
        if model == "short_edge":
            settings.append(("MIN_SIZE_TEST = field", None))
        for label, opts in settings:
            for name, chans, truth in test:
                side = truth.shape[0]
                o = (
                    opts
                    if opts is not None
                    else ["INPUT.MIN_SIZE_TEST", str(side), "INPUT.MAX_SIZE_TEST", str(side)]
                )
                base = PREDICT + o  # the prediction tool's defaults, more proposals (see PREDICT)
                pred = Predictor(load_predict_config(w, None, base), w)
                whole, n_whole = f1(truth, pred.predict_arrays(chans))
                tiled, n_tiled = f1(truth, predict_tiled(pred, chans, tile=256, overlap=64))
                rows.append((model, label, name, int(truth.max()), whole, n_whole, tiled, n_tiled))
    print(f"\nF1 at IoU > 0.5 on held-out synthetic fields ({args.iters} training iterations per model)")
    head = ("model", "test size", "field", "true", "F1 whole", "pred", "F1 tiled", "pred")
    print("{:<11} {:<22} {:<10} {:>5} {:>9} {:>5} {:>9} {:>5}".format(*head))
    for model, label, name, n, fw, nw, ft, nt in rows:
        print(f"{model:<11} {label:<22} {name:<10} {n:>5} {fw:>9.3f} {nw:>5} {ft:>9.3f} {nt:>5}")
    fixed = [r for r in rows if r[0] == "fixed"]
    spread = max(max(r[4], r[6]) for r in fixed) - min(min(r[4], r[6]) for r in fixed)
    print(f"\nfixed scale: F1 spread over field sizes and tiling {spread:.3f} (max - min)")
    print(f"work folder: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
