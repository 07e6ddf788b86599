#!/usr/bin/env python
"""Train the semantic U-Net (live/dead, small-UNet contour, counting) on HDF5 tiles.

    python tools/train_unet.py --config-file configs/unet/livedead_quick.yaml
    python tools/train_unet.py --config-file configs/unet/livedead.yaml --resume     # continue
    python tools/train_unet.py --config-file CFG UNET.SOLVER.SCHEDULER plateau OUTPUT_DIR out/plateau
    python tools/train_unet.py --config-file CFG --num-gpus 2     # 2 processes (GPUs, or CPU with gloo)

Writes checkpoints, metrics.json, overlay frames + video and plots to OUTPUT_DIR. A non-empty
OUTPUT_DIR is refused unless --resume (continue it) or --overwrite (build the new run aside and
replace the old folder when it finished). UNET.DATA.BATCH_SIZE is the batch over all processes.
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
        "--resume", action="store_true", help="continue from the newest readable checkpoint in OUTPUT_DIR"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty OUTPUT_DIR (swapped in when finished)"
    )
    add_launch_args(p)
    p.add_argument("opts", nargs="*", help="config overrides as KEY VALUE pairs")
    return p.parse_args(argv)


def _main(config_file: str, opts: list[str], resume: bool, overwrite: bool) -> None:
    setup_logging()
    from pcna_seg.config import load_config
    from pcna_seg.engine.launch import is_main_process
    from pcna_seg.unet.train import train_unet

    cfg = load_config(config_file, opts)
    summary = train_unet(cfg, resume=resume, overwrite=overwrite)
    if is_main_process():
        final = summary.get("final", {})
        shown = {k: round(v, 4) for k, v in final.items() if k.startswith(("pr_auc/", "seg", "count_mae"))}
        print(f"done: {summary.get('epochs', 0)} epochs, {shown}, outputs in {cfg.OUTPUT_DIR}")


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    launch_from_args(_main, args, (args.config_file, list(args.opts), args.resume, args.overwrite))


if __name__ == "__main__":
    main()
