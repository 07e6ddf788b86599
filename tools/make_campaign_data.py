#!/usr/bin/env python
"""Write the quick campaigns' synthetic datasets (realistic simulator, real converters) under ROOT.

    python tools/make_campaign_data.py datasets_synth                 # every set
    python tools/make_campaign_data.py datasets_synth --sets dsb2018 deepcell pcna_stage3

Folders (names the quick configs use): dsb2018 (stage 1), deepcell (stage 2), pcna_stage3
(stage 3), synthetic_nuclei (stage 0 pre-training), unseen_style (the stage-0 transfer test).
Raw files go to ROOT/../raw unless --raw. A set whose recipe (made_by.json) is unchanged is
reused. Then e.g.:

    python tools/run_campaign.py --config-file configs/campaigns/quick_pcna_staged.yaml \
        DATASETS.ROOT datasets_synth
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcna_seg.cli_utils import ToolParser, setup_logging, user_errors_exit  # noqa: E402


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    from pcna_seg.campaign.data import CAMPAIGN_SETS, data_table, prepare_campaign_data

    parser = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="datasets root to write (DATASETS.ROOT of the campaigns)")
    parser.add_argument("--raw", type=Path, default=None, help="where the raw synthetic files go")
    parser.add_argument(
        "--sets",
        nargs="+",
        default=None,
        help=f"which sets (default: the campaign sets; known: {', '.join(CAMPAIGN_SETS)})",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup_logging()
    rows = prepare_campaign_data(args.root, args.raw, args.sets, args.seed)
    print(data_table(rows))


if __name__ == "__main__":
    main()
