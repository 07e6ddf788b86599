#!/usr/bin/env python
"""Tile stitched live/dead frames into HDF5 and extract the train/val tile files.

    python tools/tile_h5.py --config-file configs/unet/livedead_quick.yaml --frames ld --out tiles/ld.h5
    python tools/tile_h5.py --config-file CFG --frames DIR --out OUT --workers 2 UNET.TILING.CHUNK_TILES 64

--frames holds images/<well>_t<k>.tif and labels/<well>_t<k>_{semantic,instances}.tif (see
README). Pass 1 writes every tile to OUT (resumable: re-run the same command after a kill);
pass 2 writes OUT_STEM_train.h5 / OUT_STEM_val.h5 (tiles with more than one class, split by well).
A rerun reuses outputs made from the same settings and unchanged frames/labels and refuses ones
of another job (saying what changed) unless --overwrite, which rebuilds them; new files replace
old ones only when complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcna_seg.cli_utils import ToolParser, setup_logging, user_errors_exit  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="", metavar="FILE", help="YAML config (UNET.* keys)")
    p.add_argument("--frames", required=True, type=Path, help="folder with images/ and labels/")
    p.add_argument("--out", required=True, type=Path, help="all-tiles HDF5 file to write (e.g. tiles/ld.h5)")
    p.add_argument("--workers", type=int, default=None, help="tiling processes (default UNET.TILING.WORKERS)")
    p.add_argument("--no-split", action="store_true", help="only pass 1 (no train/val files)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="rebuild outputs made by another job (old ones kept until the new are complete)",
    )
    p.add_argument("opts", nargs="*", help="config overrides as KEY VALUE pairs")
    return p.parse_args(argv)


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    from pcna_seg.config import load_config
    from pcna_seg.unet.tiling import run_tiling

    cfg = load_config(args.config_file or None, args.opts)
    paths = run_tiling(
        cfg, args.frames, args.out, workers=args.workers, split=not args.no_split, overwrite=args.overwrite
    )
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
