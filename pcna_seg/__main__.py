"""``pcna_seg`` / ``python -m pcna_seg``: environment info and dataset browsing.

pcna_seg --version
pcna_seg info
pcna_seg datasets list [--root DIR]
pcna_seg datasets show NAME [--root DIR] [--sheet PNG]
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
from collections import Counter

import pcna_seg
from pcna_seg.cli_utils import ToolParser, setup_logging, user_errors_exit


def environment_info() -> dict[str, str]:
    """Versions of the stack, CUDA availability and whether optional engines import."""
    info = {"pcna_seg": pcna_seg.__version__, "python": platform.python_version()}
    for mod in ("torch", "torchvision", "numpy", "pycocotools", "cv2", "h5py", "tifffile", "torchmetrics"):
        try:
            m = importlib.import_module(mod)
            info[mod] = getattr(m, "__version__", "installed")
        except Exception as exc:  # report, never crash: this is a diagnostic
            info[mod] = f"not importable ({type(exc).__name__})"
    try:
        import torch

        info["cuda"] = (
            f"available ({torch.cuda.device_count()} GPU: {torch.cuda.get_device_name(0)})"
            if torch.cuda.is_available()
            else "not available (CPU only)"
        )
        import torchvision.ops  # noqa: F401  (fails if torchvision's compiled ops cannot load)

        torchvision_ops = torch.ops.torchvision.nms
        info["torchvision ops"] = "ok" if torchvision_ops is not None else "missing"
    except Exception as exc:
        info["torchvision ops"] = f"broken ({exc})"
    from pcna_seg.modeling.d2_adapter import detectron2_status

    info["detectron2 engine"] = detectron2_status()
    return info


def _cmd_info(_: argparse.Namespace) -> None:
    for key, value in environment_info().items():
        print(f"{key:>18}: {value}")


def _cmd_list(args: argparse.Namespace) -> None:
    from pcna_seg.data.catalog import datasets_root, discover

    names = discover(args.root)
    print(f"datasets under {datasets_root(args.root)}:")
    for name in names:
        print(f"  {name}")
    if not names:
        print("  (none; run tools/prepare_dataset.py or `make demo`)")


def _cmd_show(args: argparse.Namespace) -> None:
    from pcna_seg.data.catalog import get_dataset, get_metadata
    from pcna_seg.data.visualize import contact_sheet

    records = get_dataset(args.name, args.root)
    meta = get_metadata(args.name, args.root)
    classes = meta.get("thing_classes", [])
    counts: Counter[str] = Counter()
    for rec in records:
        for ann in rec.get("annotations", []):
            counts[classes[ann["category_id"]]] += 1
    sizes = Counter(f"{r['height']}x{r['width']}" for r in records)
    summary = {
        "name": args.name,
        "json_file": meta.get("json_file"),
        "images": len(records),
        "blank_images": sum(1 for r in records if not r.get("annotations")),
        "sequences": len({r["sequence"] for r in records if "sequence" in r}),
        "classes": classes,
        "instances_per_class": {c: counts.get(c, 0) for c in classes},
        "image_sizes": dict(sizes.most_common(5)),
        "channels": sorted({k for r in records for k in (r.get("channels") or {})}) or ["gray"],
    }
    print(json.dumps(summary, indent=2))
    if args.sheet:
        path = contact_sheet(records, classes, args.sheet, title=args.name)
        print(f"contact sheet: {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="pcna_seg", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"pcna_seg {pcna_seg.__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=ToolParser)
    sub.add_parser("info", help="versions, CUDA, optional engines").set_defaults(func=_cmd_info)
    ds = sub.add_parser("datasets", help="list or show prepared datasets")
    ds_sub = ds.add_subparsers(dest="action", required=True, parser_class=ToolParser)
    p_list = ds_sub.add_parser("list", help="registered and discoverable datasets")
    p_list.add_argument(
        "--root", default=None, help="datasets root (default $PCNA_SEG_DATASETS or ./datasets)"
    )
    p_list.set_defaults(func=_cmd_list)
    p_show = ds_sub.add_parser("show", help="counts, classes and a contact sheet of one dataset")
    p_show.add_argument("name")
    p_show.add_argument("--root", default=None)
    p_show.add_argument("--sheet", default=None, help="write a contact-sheet PNG here")
    p_show.set_defaults(func=_cmd_show)
    return parser


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = build_parser().parse_args(argv)
    if not getattr(args, "func", None):
        build_parser().print_help()
        sys.exit(0)
    args.func(args)


if __name__ == "__main__":
    main()
