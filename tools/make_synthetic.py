#!/usr/bin/env python
"""Write seeded synthetic data laid out exactly like a real dataset (for demos and tests).

    python tools/make_synthetic.py dsb2018 /tmp/synth/dsb2018
    python tools/make_synthetic.py all /tmp/synth            # every format, one folder each
    python tools/make_synthetic.py pcna_masks OUT --seed 3 --option n_movies=4
    python tools/make_synthetic.py dsb2018 OUT --style clean   # the unit tests' clean look

``--style realistic`` (default) draws every image from the acquisition simulator
(pcna_seg.data.synthetic.realism: per-image scale, density and SNR, heavy-tailed brightness,
saturated bodies, defocus, debris, colour DSB images); ``clean`` is the old uniform look.

The printed summary lists images and instances per class of the ground truth written. A
non-empty OUT is refused unless ``--overwrite`` (then it is replaced as a whole).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcna_seg.cli_utils import ToolParser, setup_logging, user_errors_exit  # noqa: E402
from pcna_seg.data.converters.options import parse_options  # noqa: E402
from pcna_seg.data.synthetic import WRITERS, get_writer, write_synthetic  # noqa: E402
from pcna_seg.utils_io import check_output_folder  # noqa: E402


def summarize(gt) -> str:
    counts: Counter[str] = Counter(c for img in gt.images for c in img.classes.values())
    per_class = ", ".join(f"{name}: {counts.get(name, 0)}" for name in gt.class_names)
    return f"{gt.format}: {len(gt.images)} images, {sum(counts.values())} instances ({per_class})"


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    parser = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=sorted(WRITERS) + ["all"])
    parser.add_argument("out", type=Path, help="folder to write (new or empty; see --overwrite)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--style", choices=["clean", "realistic"], default="realistic")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT as a whole")
    args = parser.parse_args(argv)
    setup_logging()
    formats = sorted(WRITERS) if args.format == "all" else [args.format]
    options: dict = {}
    for fmt in formats:  # with "all", an option must suit every writer
        options |= parse_options(
            args.option, get_writer(fmt), f"synthetic format {fmt}", {"seed": "--seed", "style": "--style"}
        )
    check_output_folder(args.out, overwrite=args.overwrite)
    nested = args.format == "all"
    written = write_synthetic(
        formats,
        args.out,
        overwrite=args.overwrite,
        nested=nested,
        seed=args.seed,
        style=args.style,
        **options,
    )
    for fmt, gt in written.items():
        print(f"{summarize(gt)} -> {args.out / fmt if nested else args.out}")


if __name__ == "__main__":
    main()
