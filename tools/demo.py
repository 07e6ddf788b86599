#!/usr/bin/env python
"""`make demo`: the staged campaign end to end on synthetic data, offline, in minutes on a CPU.

python tools/demo.py --output demo_output [--no-unet] [KEY VALUE ...]

Writes realistic synthetic data in the DSB2018 / DeepCell / PCNA layouts (and every other format
the project reads) and converts it; runs the quick three-stage campaign with tools/run_campaign.py
(Kaggle nuclei -> DeepCell nuclei -> PCNA phases; report in OUTPUT/campaign/campaign_report.md);
predicts the held-out PCNA movies; runs the quick live/dead U-Net chain. A second run reuses every
step whose inputs and settings are unchanged and says so. Trailing KEY VALUE overrides go to every
campaign stage (e.g. SOLVER.MAX_ITER 1000 SOLVER.STEPS "(800,)" for a longer run).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcna_seg.cli_utils import ToolParser, setup_logging, user_errors_exit  # noqa: E402


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    parser = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("demo_output"))
    parser.add_argument("--no-unet", action="store_true", help="skip the live/dead U-Net chain")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--verbose", action="store_true", help="show the library's log lines too")
    parser.add_argument("opts", nargs="*", help="config overrides for every campaign stage")
    args = parser.parse_args(argv)
    setup_logging()
    if not args.verbose:  # the tables are the demo's output; each step's full log is in OUTPUT/logs
        logging.getLogger("pcna_seg").setLevel(logging.WARNING)
    from pcna_seg.demo import run_demo

    run_demo(
        args.output,
        seed=args.seed,
        opts=args.opts,
        unet=not args.no_unet,
        emit=lambda s: print(s, flush=True),
    )
    print(f"demo finished; everything is under {args.output}/")


if __name__ == "__main__":
    main()
