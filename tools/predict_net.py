#!/usr/bin/env python
"""Predict nuclei and their cell-cycle phases on new images with a trained Mask R-CNN.

python tools/predict_net.py --weights output/stage3/model_final.pth --input movies/ --output pred/
python tools/predict_net.py --weights W --input "fields/*.tif" --output pred/ --tile 256 --overlap 64
python tools/predict_net.py --weights W --input datasets/pcna_stage3/val.json --output pred/
python tools/predict_net.py --weights W --input X --output pred/ MODEL.DEVICE cpu

--input: a folder of PCNA movies (*mcy*.tif with their *dic* partners, stacked (T, H, W) or one
file per frame; every frame is predicted), a folder / glob / file of single-channel images
(channel "gray"), or a prepared dataset (COCO JSON path or dataset name).
Writes <frame>_labels.tif (uint16 instance labels), <frame>_overlay.png (outlines coloured by
phase) and objects.csv (one row per object) into --output, then prints objects per phase.
A non-empty --output is refused unless --overwrite (then it is replaced as a whole).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcna_seg.cli_utils import ToolParser, setup_logging, user_errors_exit  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, metavar="PTH", help="trained checkpoint (model_final.pth)")
    p.add_argument(
        "--config-file", metavar="FILE", default=None, help="config (default: config.yaml next to --weights)"
    )
    p.add_argument("--input", required=True, help="PCNA movie folder, image folder/glob/file, or dataset")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for label TIFFs, overlays, CSV")
    p.add_argument(
        "--tile", type=int, default=0, help="tile size in model pixels for large fields (0 = no tiling)"
    )
    p.add_argument(
        "--overlap", type=int, default=64, help="tile overlap in model pixels (>= largest nucleus)"
    )
    p.add_argument(
        "--diameter",
        type=float,
        default=None,
        help="nucleus diameter of the inputs in pixels (INPUT.SCALE.MODE object_size models; default: "
        "INPUT.SCALE.TEST_DIAMETER, else estimated per image)",
    )
    p.add_argument(
        "--score-thresh",
        type=float,
        default=0.5,
        help="keep detections scoring at least this (sets MODEL.ROI_HEADS.SCORE_THRESH_TEST)",
    )
    p.add_argument(
        "--per-class-nms",
        action="store_true",
        help="keep the config's per-class NMS (default: class-agnostic, one detection per nucleus)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --output as a whole (new predictions built aside, swapped in at the end)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("opts", nargs="*", help="config overrides as KEY VALUE pairs")
    return p.parse_args(argv)


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    from pcna_seg.errors import ConfigError
    from pcna_seg.inference import Predictor, find_inputs, load_predict_config, run_prediction
    from pcna_seg.utils_io import check_output_folder

    if args.tile < 0 or args.overlap < 0 or (args.tile and args.overlap >= args.tile):
        raise ConfigError(f"Need --tile >= 0 and 0 <= --overlap < --tile, got {args.tile} and {args.overlap}")
    if args.diameter is not None and not 0 < args.diameter < float("inf"):
        raise ConfigError(f"--diameter must be > 0 (nucleus diameter in pixels), got {args.diameter}")
    if not 0.0 <= args.score_thresh <= 1.0:
        raise ConfigError(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    glob_parent = str(Path(args.input).parent) if any(c in args.input for c in "*?[") else None
    inputs = [args.input, glob_parent]
    check_output_folder(
        args.output, overwrite=args.overwrite, inputs=inputs
    )  # refuse before loading anything
    nms = [] if args.per_class_nms else ["MODEL.ROI_HEADS.NMS_CLASS_AGNOSTIC", "True"]
    opts = [*nms, *args.opts, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(args.score_thresh)]
    cfg = load_predict_config(args.weights, args.config_file, opts)
    frames = find_inputs(args.input, cfg.DATASETS.ROOT or None)
    predictor = Predictor(cfg, args.weights, diameter=args.diameter or 0.0)
    writer = run_prediction(
        predictor,
        frames,
        args.output,
        args.tile,
        args.overlap,
        not args.no_progress,
        overwrite=args.overwrite,
    )
    print(writer.count_table())
    print(f"outputs: {Path(args.output).resolve()}")


if __name__ == "__main__":
    main()
