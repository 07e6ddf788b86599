#!/usr/bin/env python
"""Train or evaluate Mask R-CNN from a config (detectron2-style flags).

python tools/train_net.py --config-file configs/quick_schedules/quick_stage3_pcna.yaml
python tools/train_net.py --config-file CFG --resume                 # continue the last run
python tools/train_net.py --config-file CFG --overwrite              # replace OUTPUT_DIR's run
python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
python tools/train_net.py --config-file CFG --num-gpus 4             # or: torchrun ... train_net.py
python tools/train_net.py --config-file CFG SOLVER.BASE_LR 0.005 OUTPUT_DIR out/run2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcna_seg.cli_utils import ToolParser, add_launch_args, launch_from_args, setup_logging, user_errors_exit  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config-file", required=True, metavar="FILE", help="YAML config (with _BASE_ inheritance)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in OUTPUT_DIR from its newest readable checkpoint (a new run if it has none)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty OUTPUT_DIR (eval-only: OUTPUT_DIR/eval/<dataset>); the old one is "
        "kept until the new run has finished",
    )
    p.add_argument("--eval-only", action="store_true", help="only evaluate MODEL.WEIGHTS on DATASETS.TEST")
    add_launch_args(p)
    p.add_argument("opts", nargs="*", help="config overrides as KEY VALUE pairs")
    return p.parse_args(argv)


def _main(config_file: str, opts: list[str], resume: bool, eval_only: bool, overwrite: bool = False) -> None:
    setup_logging()
    from pcna_seg.engine.trainer import run_train_net

    run_train_net(config_file, opts, resume=resume, eval_only=eval_only, overwrite=overwrite)


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    launch_from_args(
        _main, args, (args.config_file, list(args.opts), args.resume, args.eval_only, args.overwrite)
    )


if __name__ == "__main__":
    main()
