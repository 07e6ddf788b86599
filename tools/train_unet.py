#!/usr/bin/env python
"""Train the semantic U-Net (live/dead, small-UNet contour, counting) on HDF5 tiles.

    python tools/train_unet.py --config-file configs/unet/livedead_quick.yaml
    python tools/train_unet.py --config-file configs/unet/livedead.yaml --resume     # continue
    python tools/train_unet.py --config-file CFG UNET.SOLVER.SCHEDULER plateau OUTPUT_DIR out/plateau

Writes checkpoints, metrics.json, overlay frames + video and plots to OUTPUT_DIR. A non-empty
OUTPUT_DIR is refused unless --resume (continue it) or --overwrite (build the new run aside and
replace the old folder when it finished).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcna_seg.cli_utils import ToolParser, setup_logging, user_errors_exit  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config-file", required=True, metavar="FILE", help="YAML config (with _BASE_ inheritance)"
    )
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint.pth")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty OUTPUT_DIR (swapped in when finished)"
    )
    p.add_argument("opts", nargs="*", help="config overrides as KEY VALUE pairs")
    return p.parse_args(argv)


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    from pcna_seg.config import load_config
    from pcna_seg.unet.train import train_unet

    cfg = load_config(args.config_file, args.opts)
    summary = train_unet(cfg, resume=args.resume, overwrite=args.overwrite)
    final = summary["final"]
    shown = {k: round(v, 4) for k, v in final.items() if k.startswith(("pr_auc/", "seg", "count_mae"))}
    print(f"done: {summary['epochs']} epochs, {shown}, outputs in {cfg.OUTPUT_DIR}")


if __name__ == "__main__":
    main()
