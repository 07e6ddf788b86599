#!/usr/bin/env python
"""Convert a dataset in its original layout into the project's prepared COCO folder.

    python tools/prepare_dataset.py dsb2018 path/to/stage1_train datasets/dsb2018
    python tools/prepare_dataset.py pcna_via path/to/movies datasets/pcna_stage3 --option via_json=ann.json
    python tools/prepare_dataset.py FORMAT SRC OUT --val-fraction 0.2 --seed 0

Formats: dsb2018, deepcell_npz, deepcell_trks, ctc, pcna_via, pcna_masks, bbbc039, livecell.
Format-specific options are passed as ``--option KEY=VALUE`` (values parsed as Python literals
when possible). The output folder is then usable as ``DATASETS.TRAIN: ("<folder>_train",)``
with ``DATASETS.ROOT`` (or $PCNA_SEG_DATASETS) set to its parent.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcna_seg.cli_utils import ToolParser, setup_logging, user_errors_exit  # noqa: E402
from pcna_seg.data.converters import CONVERTERS, get_converter  # noqa: E402
from pcna_seg.errors import ConfigError  # noqa: E402


def parse_options(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--option expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def check_options(func, options: dict, fmt: str) -> None:
    """Reject option names the converter does not take, listing the ones it does."""
    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    for key in options:
        if key not in valid:
            raise ConfigError(f"Unknown --option {key!r} for format {fmt}; valid options: {', '.join(valid)}")


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    parser = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=sorted(CONVERTERS))
    parser.add_argument("src", type=Path, help="dataset in its original layout")
    parser.add_argument("out", type=Path, help="prepared folder to write")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    setup_logging()
    convert = get_converter(args.format)
    options = parse_options(args.option)
    check_options(convert, options, args.format)
    card = convert(
        args.src,
        args.out,
        val_fraction=args.val_fraction,
        seed=args.seed,
        progress=not args.quiet,
        **options,
    )
    print(json.dumps(card, indent=2, default=str))
    print(f"prepared dataset written to {args.out}")


if __name__ == "__main__":
    main()
