#!/usr/bin/env python
"""`make demo`: synthetic data in every format → COCO → quick stage-3 training → evaluation.

python tools/demo.py --output demo_output [--no-train] [KEY VALUE ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcna_seg.cli_utils import ToolParser, setup_logging, user_errors_exit  # noqa: E402
from pcna_seg.demo import run_demo  # noqa: E402


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    parser = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("demo_output"))
    parser.add_argument("--no-train", action="store_true", help="data part only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("opts", nargs="*", help="config overrides for the training run")
    args = parser.parse_args(argv)
    setup_logging()
    run_demo(args.output, train=not args.no_train, seed=args.seed, opts=args.opts)
    print(f"\ndemo finished; everything is under {args.output}/")


if __name__ == "__main__":
    main()
