#!/usr/bin/env python
"""Run a staged fine-tuning campaign (several train_net stages, weights chained) as one command.

    python tools/run_campaign.py --config-file configs/campaigns/quick_pcna_staged.yaml DATASETS.ROOT datasets
    python tools/run_campaign.py --config-file ... --dry-run        # print the plan only
    python tools/run_campaign.py --config-file ... --seeds 0,1,2    # repeat every stage per seed
    python tools/run_campaign.py --config-file ... --num-gpus 4     # each stage on 4 GPUs

Trailing KEY VALUE overrides apply to every stage (e.g. DATASETS.ROOT /data SOLVER.MAX_ITER 100).
Each stage trains in its own tools/train_net.py process and logs into its own folder. Re-running
skips finished stages and resumes an interrupted one, as long as nothing that made them changed
(stage_fingerprint.json in each stage folder: resolved config, the weights it starts from,
dataset files). A changed stage stops the campaign with the reason; --overwrite retrains it and
every stage after it that starts from its weights. The campaign folder gets campaign_summary.json,
campaign_report.md and its PNGs (with seeds: a mean ± sd comparison table and bar chart).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcna_seg.cli_utils import ToolParser, setup_logging, user_errors_exit  # noqa: E402


def _row(row: dict) -> str:
    m = next(iter((row.get("metrics") or {}).values()), {})
    nums = "  ".join(
        f"{title} {m[key]:.3f}"
        for key, title in (
            ("segm/AP50", "AP50"),
            ("cells/f1@0.5", "F1"),
            ("cells/dsb_score", "DSB"),
            ("phases/balanced_accuracy", "phase-bacc"),
        )
        if key in m
    )
    wall = f"{row['wall_s']:.0f}s" if row.get("wall_s") is not None else "-"
    return f"{row['label']:<30} was {row['was']:<8} {row['action']:<8} {wall:>6}  {nums}"


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    parser = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="campaign YAML (CAMPAIGN.STAGES ...)")
    parser.add_argument("--dry-run", action="store_true", help="print each stage's command, train nothing")
    parser.add_argument(
        "--overwrite", action="store_true", help="retrain stale stages (and the stages starting from them)"
    )
    parser.add_argument(
        "--seeds",
        default=None,
        metavar="0,1,2",
        help="repeat the campaign per seed (replaces CAMPAIGN.SEEDS)",
    )
    parser.add_argument(
        "--num-gpus", type=int, default=1, help="processes per stage, as train_net.py --num-gpus"
    )
    parser.add_argument("--no-report", action="store_true", help="skip campaign_report.md and its pictures")
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides for every stage")
    args = parser.parse_args(argv)
    setup_logging()
    from pcna_seg.campaign import run_campaign

    summary = run_campaign(
        args.config_file,
        args.opts,
        dry_run=args.dry_run,
        overwrite=args.overwrite,
        seeds=None if args.seeds is None else [t.strip() for t in args.seeds.split(",")],
        num_gpus=args.num_gpus,
        report=not args.no_report,
    )
    print(f"\ncampaign {summary['campaign']}: {len(summary['stages'])} stage runs")
    for row in summary["stages"]:
        print(_row(row))
        if row["action"] in ("stale", "retrain"):
            print(f"    {row['reason']}")
        if "command" in row:
            print(f"    {row['command']}")
    if summary.get("pbs_submit"):
        print(f"PBS scripts written; submit with: bash {summary['pbs_submit']}")
    if summary.get("report"):
        print(f"report: {summary['report']}")


if __name__ == "__main__":
    main()
