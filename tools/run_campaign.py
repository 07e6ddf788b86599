#!/usr/bin/env python
"""Run a staged fine-tuning campaign (several train_net stages, weights chained) as one command.

    python tools/run_campaign.py --config-file configs/campaigns/quick_pcna_staged.yaml [KEY VALUE ...]
    python tools/run_campaign.py --config-file ... --dry-run      # print the plan only

Trailing KEY VALUE overrides apply to every stage (e.g. DATASETS.ROOT /data SOLVER.MAX_ITER 100).
Re-running skips finished stages and resumes an interrupted one, as long as nothing that made
them changed (stage_fingerprint.json in each stage folder: resolved config, the weights it starts
from, dataset files). A changed stage stops the campaign with the reason; --overwrite retrains it
and every stage after it that starts from its weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcna_seg.cli_utils import ToolParser, setup_logging, user_errors_exit  # noqa: E402


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    parser = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="campaign YAML (CAMPAIGN.STAGES ...)")
    parser.add_argument("--dry-run", action="store_true", help="print each stage's command, train nothing")
    parser.add_argument(
        "--overwrite", action="store_true", help="retrain stale stages (and the stages starting from them)"
    )
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides for every stage")
    args = parser.parse_args(argv)
    setup_logging()
    from pcna_seg.campaign import run_campaign

    summary = run_campaign(args.config_file, args.opts, dry_run=args.dry_run, overwrite=args.overwrite)
    for row in summary["stages"]:
        print(
            f"stage {row['index']} {row['name']:<24} was {row['was']:<8} {row['action']:<8} "
            f"{json.dumps(row.get('metrics', {}))}"
        )
        if row["action"] in ("stale", "retrain"):
            print(f"    {row['reason']}")
        if "command" in row:
            print(f"    {row['command']}")
    if summary.get("pbs_submit"):
        print(f"PBS scripts written; submit with: bash {summary['pbs_submit']}")


if __name__ == "__main__":
    main()
