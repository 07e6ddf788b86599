#!/usr/bin/env python
"""Acceptance check: train the quick stage-3 schedule on synthetic 3-phase PCNA data (CPU) and
report validation AP.

Steps: synthetic PCNA/DIC movies with label masks and a phase table
(``pcna_seg.data.synthetic.write_pcna.write_masks``) → the PCNA converter (COCO, split BY
SEQUENCE so no movie is in both train and val) → ``configs/quick_schedules/quick_stage3_pcna.yaml``
trained on CPU within a time budget → COCO evaluation on the validation movies → segm AP50/AP,
bbox AP printed, loss/AP curves written to ``WORKDIR/output/curves.png``.

    python benchmarks/quick_ap.py                       # <= 10 minutes on 2 CPU cores
    python benchmarks/quick_ap.py --minutes 3 SOLVER.MAX_ITER 200
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pcna_seg.engine.hooks import HookBase  # noqa: E402


class TimeBudget(HookBase):
    """Makes the current iteration the last one once ``seconds`` have passed (final eval still runs)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()

    def before_step(self) -> None:
        if time.perf_counter() - self.start > self.seconds and self.trainer.max_iter > self.trainer.iter + 1:
            logging.getLogger("quick_ap").info("time budget reached at iteration %d", self.trainer.iter)
            self.trainer.max_iter = self.trainer.iter + 1


def make_data(root: Path, seed: int, movies: int, frames: int, size: int, nuclei: int) -> dict:
    from pcna_seg.data.converters.pcna import convert_masks
    from pcna_seg.data.synthetic.write_pcna import write_masks

    write_masks(
        root / "raw", seed=seed, n_movies=movies, n_frames=frames, height=size, width=size, n_nuclei=nuclei
    )
    convert_masks(root / "raw", root / "pcna_stage3", val_fraction=0.25, seed=seed, progress=False)
    split = json.loads((root / "pcna_stage3" / "split.json").read_text())
    return split


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="output/quick_ap")
    p.add_argument("--config-file", default=str(ROOT / "configs/quick_schedules/quick_stage3_pcna.yaml"))
    p.add_argument("--minutes", type=float, default=9.0, help="training time budget (evaluation excluded)")
    p.add_argument("--movies", type=int, default=8)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--nuclei", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (more than free cores is much slower)"
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    args = p.parse_args()

    import torch

    from pcna_seg.cli_utils import setup_logging
    from pcna_seg.config import load_config
    from pcna_seg.engine.trainer import Trainer
    from pcna_seg.evaluation.report import plot_training_curves

    setup_logging()
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    data = work / "datasets"
    t0 = time.perf_counter()
    split = make_data(data, args.seed, args.movies, args.frames, args.size, args.nuclei)
    print(
        f"data: {len(split['train'])} train / {len(split['val'])} val images, split by {split['by']} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    out = work / "output"
    opts = ["DATASETS.ROOT", str(data), "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu", *args.opts]
    cfg = load_config(args.config_file, opts)
    t1 = time.perf_counter()
    trainer = Trainer(cfg, extra_hooks=[TimeBudget(args.minutes * 60)])
    results = trainer.train()
    wall = time.perf_counter() - t1
    png = plot_training_curves(out / "metrics.json", out / "curves.png")
    segm, bbox = results.get("segm", {}), results.get("bbox", {})
    print("\nquick stage-3 PCNA (synthetic, CPU)")
    print(
        f"  iterations trained   {trainer.iter + 1} of {cfg.SOLVER.MAX_ITER} in {wall / 60:.1f} min "
        f"(incl. evaluations)"
    )
    print(f"  segm AP50 / AP       {segm.get('AP50', float('nan')):.3f} / {segm.get('AP', float('nan')):.3f}")
    print(f"  bbox AP50 / AP       {bbox.get('AP50', float('nan')):.3f} / {bbox.get('AP', float('nan')):.3f}")
    per_class = {k: round(v, 3) for k, v in segm.items() if k.startswith("AP-")}
    print(f"  segm AP per phase    {per_class}")
    conf = results.get("phase_confusion")
    if conf:
        print(f"  phase accuracy       {conf['accuracy']:.3f} over {conf['matched']} matched nuclei")
    print(f"  target segm AP50 >= 0.5: {'PASS' if segm.get('AP50', 0) >= 0.5 else 'FAIL'}")
    print(f"  curves: {png}\n  results: {out / 'eval' / cfg.DATASETS.TEST[0] / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
