#!/usr/bin/env python
"""Write seeded synthetic data laid out exactly like a real dataset (for demos and tests).

    python tools/make_synthetic.py dsb2018 /tmp/synth/dsb2018
    python tools/make_synthetic.py all /tmp/synth            # every format, one folder each
    python tools/make_synthetic.py pcna_masks OUT --seed 3 --option n_movies=4

The printed summary lists images and instances per class of the ground truth written.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcna_seg.cli_utils import ToolParser, setup_logging, user_errors_exit  # noqa: E402
from pcna_seg.data.synthetic import WRITERS, get_writer  # noqa: E402
from tools.prepare_dataset import parse_options  # noqa: E402


def summarize(gt) -> str:
    counts: Counter[str] = Counter(c for img in gt.images for c in img.classes.values())
    per_class = ", ".join(f"{name}: {counts.get(name, 0)}" for name in gt.class_names)
    return f"{gt.format}: {len(gt.images)} images, {sum(counts.values())} instances ({per_class})"


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    parser = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=sorted(WRITERS) + ["all"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    setup_logging()
    options = parse_options(args.option)
    formats = sorted(WRITERS) if args.format == "all" else [args.format]
    for fmt in formats:
        out = args.out / fmt if args.format == "all" else args.out
        gt = get_writer(fmt)(out, seed=args.seed, **options)
        print(f"{summarize(gt)} -> {out}")


if __name__ == "__main__":
    main()
