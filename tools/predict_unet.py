#!/usr/bin/env python
"""Predict whole frames with a trained U-Net: label TIFFs, overlays, live/dead counts CSV.

    python tools/predict_unet.py --config-file configs/unet/livedead_quick.yaml \
        --weights output/unet_livedead_quick/model_final.pth --input demo_data/livedead/frames \
        --output output/unet_predictions
    python tools/predict_unet.py --config-file CFG --weights W --input "plate/*_{channel}.tif" \
        --output out UNET.INFER.SAVE_PROBS True MODEL.DEVICE cuda

--input: a folder in the synthetic/lab layout (images/*.tif), a glob of (C, H, W) TIFFs, or a glob
with {channel} filled from UNET.CHANNELS (one file per channel). A non-empty --output folder is
refused unless --overwrite (the new predictions replace it as a whole when complete).
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
        "--config-file", required=True, metavar="FILE", help="the config the model was trained with"
    )
    p.add_argument("--weights", default="", help="checkpoint (default: UNET.WEIGHTS)")
    p.add_argument("--input", required=True, help="frames folder, TIFF glob, or glob with {channel}")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder as a whole")
    p.add_argument("opts", nargs="*", help="config overrides as KEY VALUE pairs")
    return p.parse_args(argv)


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    from pcna_seg.config import load_config
    from pcna_seg.unet.predict import predict_unet

    cfg = load_config(args.config_file, args.opts)
    rows = predict_unet(cfg, args.input, args.output, args.weights, overwrite=args.overwrite)
    print(f"predicted {len(rows)} frames; counts in {Path(args.output) / 'counts.csv'}")


if __name__ == "__main__":
    main()
