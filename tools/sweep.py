#!/usr/bin/env python
"""Run a hyperparameter sweep (grid and seeded random axes) of either trainer, or of campaigns.

    python tools/sweep.py configs/sweeps/unet_livedead_quick.yaml            # run it (again: skip done)
    python tools/sweep.py configs/sweeps/unet_livedead_quick.yaml --dry-run  # list trials, run nothing
    python tools/sweep.py configs/sweeps/unet_livedead_quick.yaml --status   # done/running/failed/pending
    python tools/sweep.py SWEEP.yaml --executor dask --workers 4             # override the executor
    python tools/sweep.py configs/sweeps/unet_pbs.yaml --dry-run             # + the PBS job script

Each trial trains in OUTPUT_DIR = <output_dir>/trials/<hash of its config>/run; finished trials
are skipped, interrupted or failed ones resumed from their checkpoints. Writes sweep_results.csv,
sweep_report.md (ranked table, plots) and best_config.yaml into the sweep's output_dir.
Exit code 2 when a trial failed (the others still ran; its error is in the report), 1 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcna_seg.cli_utils import ToolParser, setup_logging, user_errors_exit  # noqa: E402


def _shown(values: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items())


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", metavar="SWEEP.yaml", help="sweep file (base, grid, random, metric, executor)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--dry-run", action="store_true", help="print the trials (and job script); run nothing")
    what.add_argument("--status", action="store_true", help="print each trial's status; run nothing")
    p.add_argument("--executor", choices=("local", "dask"), help="override executor.kind")
    p.add_argument("--workers", type=int, help="override executor.workers (trials at once / jobs)")
    p.add_argument("--overwrite", action="store_true", help="retrain finished trials whose inputs changed")
    args = p.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    setup_logging()
    from pcna_seg.campaign import sweep

    spec = sweep.load_sweep(args.sweep, executor=args.executor, workers=args.workers)
    if args.dry_run or args.status:
        trials, status, executor = sweep.plan(spec)
        counts: dict[str, int] = {}
        for t in trials:
            counts[status[t.id]] = counts.get(status[t.id], 0) + 1
        print(
            f"sweep {spec.name}: {len(trials)} trials ({spec.trainer}), executor {executor.describe()}, "
            f"output {spec.output_dir}"
        )
        print("  " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        for t in trials:
            rec = sweep.ex.read_record(t.dir)
            extra = rec.get("error", "") if status[t.id] == "failed" else ""
            metric = rec.get("metrics", {}).get(spec.metric)
            shown = f" {spec.metric}={metric:.4g}" if isinstance(metric, float) else ""
            print(f"{t.id}  {status[t.id]:<11} {_shown(t.values)}{shown} {extra}".rstrip())
        if args.dry_run:
            print("command of the first trial:")
            first = sweep.payload(spec, trials[0])
            print("  python tools/" + first["tool"] + " " + " ".join(first["args"]))
            script = executor.job_script()
            if script:
                print("job script of each dask worker (the scheduler address is filled in at run time):")
                print(script)
        return
    summary = sweep.run_sweep(spec, overwrite=args.overwrite)
    print(f"ran {summary['ran']} trials ({summary['failed']} failed), skipped {summary['skipped']} finished")
    rows = summary["results"].get("rows", [])
    for r in rows[:10]:
        m = r["metrics"].get(spec.metric)
        print(
            f"  {str(r['rank']):>3} {r['trial']} {r['status']:<8} {_shown(r['values'])} "
            f"{spec.metric}={'' if m is None else f'{m:.4g}'}"
        )
    for key in ("csv", "report", "best_config"):
        if summary["results"].get(key):
            print(f"{key}: {summary['results'][key]}")
    if summary["failed"]:
        sys.exit(2)


if __name__ == "__main__":
    main()
