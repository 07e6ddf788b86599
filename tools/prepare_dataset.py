#!/usr/bin/env python
"""Convert a dataset in its original layout into the project's prepared COCO folder.

    python tools/prepare_dataset.py dsb2018 path/to/stage1_train datasets/dsb2018
    python tools/prepare_dataset.py pcna_via path/to/movies datasets/pcna_stage3 --option via_json=ann.json
    python tools/prepare_dataset.py FORMAT SRC OUT --val-fraction 0.2 --seed 0

Formats: dsb2018, deepcell_npz, deepcell_trks, ctc, pcna_via, pcna_masks, bbbc039, livecell.
Format-specific options are passed as ``--option KEY=VALUE`` (each value checked against the
option's type: integer, number, True/False, string or comma-separated list). A non-empty OUT is
refused unless ``--overwrite`` (then the new dataset is built aside and replaces OUT only when
complete). The output folder is then usable as ``DATASETS.TRAIN: ("<folder>_train",)``
with ``DATASETS.ROOT`` (or $PCNA_SEG_DATASETS) set to its parent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcna_seg.cli_utils import ToolParser, setup_logging, user_errors_exit  # noqa: E402
from pcna_seg.data.converters import CONVERTERS, get_converter  # noqa: E402
from pcna_seg.data.converters.base import check_source_output, check_val_fraction  # noqa: E402
from pcna_seg.data.converters.options import parse_options  # noqa: E402
from pcna_seg.utils_io import check_output_folder  # noqa: E402

#: converter parameters set by this tool's own flags
RESERVED = {
    "val_fraction": "--val-fraction",
    "seed": "--seed",
    "progress": "--quiet",
    "overwrite": "--overwrite",
}


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    parser = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=sorted(CONVERTERS))
    parser.add_argument("src", type=Path, help="dataset in its original layout")
    parser.add_argument("out", type=Path, help="prepared folder to write (new or empty; see --overwrite)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of images for val, in [0, 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty OUT (built aside, swapped in at the end)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    setup_logging()
    convert = get_converter(args.format)
    val_fraction = check_val_fraction(args.val_fraction)  # every check before any work
    options = parse_options(args.option, convert, f"format {args.format}", RESERVED)
    check_source_output(args.src, args.out)
    check_output_folder(args.out, overwrite=args.overwrite)
    card = convert(
        args.src,
        args.out,
        overwrite=args.overwrite,
        val_fraction=val_fraction,
        seed=args.seed,
        progress=not args.quiet,
        **options,
    )
    print(json.dumps(card, indent=2, default=str))
    print(f"prepared dataset written to {args.out}")


if __name__ == "__main__":
    main()
