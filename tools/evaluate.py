#!/usr/bin/env python
"""Cell-level evaluation of predicted label images against ground-truth label images.

    python tools/evaluate.py --gt GT_DIR --pred PRED_DIR --output eval_out/
    python tools/evaluate.py --gt gt/ --pred predictions/ --output eval_out/ --iou-rule ge --overwrite

    python tools/evaluate.py --gt datasets/pcna_stage3/val.json --pred predictions/ --output eval_out/

GT_DIR and PRED_DIR hold (H, W) integer label images (TIFF or PNG, 0 = background), paired by
file name without a trailing _labels / _mask tag (img01.tif ↔ img01_labels.tif, the prediction
tool's output). --gt may also be a prepared dataset (COCO JSON or dataset name) predicted with
tools/predict_net.py; then the phases in its objects.csv are scored too. Writes metrics.json,
report.md and PNGs (F1 vs IoU, count errors, worst images, phase confusion).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcna_seg.cli_utils import ToolParser, setup_logging, user_errors_exit  # noqa: E402


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--gt", required=True, help="folder of ground-truth label images, or a COCO JSON / dataset name"
    )
    p.add_argument("--pred", required=True, type=Path, help="folder of predicted label images")
    p.add_argument("--output", required=True, type=Path, help="report folder to write")
    p.add_argument(
        "--iou-rule",
        choices=("gt", "ge"),
        default="gt",
        help="match when IoU > threshold (gt, the DSB2018 rule) or >= threshold (ge)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    p.add_argument("--datasets-root", default=None, help="where dataset names are looked up (DATASETS.ROOT)")
    args = p.parse_args(argv)
    setup_logging()
    from pcna_seg.evaluation.cell_report import evaluate_label_folders

    res = evaluate_label_folders(
        args.gt, args.pred, args.output, args.iou_rule, args.overwrite, datasets_root=args.datasets_root
    )
    m = res["cells"]
    print(
        f"{m['n_frames']} images, {m['n_gt']} true / {m['n_pred']} predicted nuclei: "
        f"F1@0.5 {m['f1@0.5']:.3f}, PQ@0.5 {m['pq@0.5']:.3f}, DSB score {m['dsb_score']:.3f}, "
        f"SEG {m['seg']:.3f}, count MAE {m['count_mae']:.2f}"
    )
    if "phases" in res:
        ph = res["phases"]
        print(f"phases of {ph['n_matched']} matched nuclei: balanced accuracy {ph['balanced_accuracy']:.3f}")
    print(f"report: {Path(args.output) / 'report.md'}")


if __name__ == "__main__":
    main()
