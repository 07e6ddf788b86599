#!/usr/bin/env python
"""Write synthetic stitched live/dead frames laid out like the lab's (for demos and tests).

    python tools/make_livedead.py data/livedead                      # 3 wells x 2 timepoints, 2700x3600
    python tools/make_livedead.py /tmp/ld --wells A1 A2 B1 B2 --timepoints 3 --height 540 --width 720

Writes images/<well>_t<k>.tif ((2, H, W) uint16: HOECHST, Draq7) and labels/<well>_t<k>_semantic.tif
(uint8 0 bg / 1 live / 2 dead) + labels/<well>_t<k>_instances.tif (int32).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcna_seg.cli_utils import ToolParser, setup_logging, user_errors_exit  # noqa: E402


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--wells", nargs="+", default=["A1", "A2", "B1"])
    p.add_argument("--timepoints", type=int, default=2)
    p.add_argument("--height", type=int, default=2700)
    p.add_argument("--width", type=int, default=3600)
    p.add_argument("--dead-fraction", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT as a whole")
    args = p.parse_args(argv)
    setup_logging()
    from pcna_seg.data.synthetic.write_livedead import write
    from pcna_seg.utils_io import output_folder

    with output_folder(args.out, overwrite=args.overwrite) as target:
        gt = write(
            target,
            seed=args.seed,
            wells=args.wells,
            timepoints=args.timepoints,
            height=args.height,
            width=args.width,
            dead_fraction=args.dead_fraction,
        )
    counts = Counter(c for img in gt.images for c in img.classes.values())
    live, dead = counts.get("live", 0), counts.get("dead", 0)
    print(f"livedead: {len(gt.images)} frames, {live} live, {dead} dead nuclei -> {args.out}")


if __name__ == "__main__":
    main()
