"""Synthetic data for the quick campaigns, in the real datasets' layouts, made by the real
converters, under one datasets root whose folder names the quick configs use:

==================  =============================================  =======================
folder              written as (realistic acquisition simulator)   used by
==================  =============================================  =======================
``dsb2018``         DSB2018 ``stage1_train`` folders (PNG + masks)  stage 1 (Kaggle)
``deepcell``        DeepCell ``.npz`` movies of 4 frames            stage 2 (DeepCell)
``pcna_stage3``     PCNA/DIC movies + label masks + phases.csv      stage 3 (G1/G2, S, M)
``synthetic_nuclei`` DSB2018 folders, another seed, more images      stage 0 (pre-training)
``unseen_style``    DSB2018 folders of a style stage 0 never saw    stage-0 transfer test
==================  =============================================  =======================

``unseen_style`` uses ranges outside the simulator's defaults (wider brightness spread, more
and stronger defocus, denser, lower SNR, brighter background; the ``shifted`` family of
``benchmarks/synthetic_shift.py``). Each folder carries ``made_by.json`` (writer, options,
seed, converter options and a digest of the generator and converter sources); a folder whose
recipe is unchanged is reused as is, so the campaigns trained on it stay valid.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pcna_seg.data.synthetic.realism import SHIFTED_REALISM, Realism
from pcna_seg.utils_io import file_digest, fingerprint, write_json_atomic

logger = logging.getLogger(__name__)
MADE_BY = "made_by.json"
SIZE = (192, 320)  # DSB-style image height/width range, px
UNSEEN = SHIFTED_REALISM  # the style the default ranges do not cover
# folder -> (synthetic format, writer options, converter options, seed offset)
CAMPAIGN_SETS: dict[str, tuple[str, dict[str, Any], dict[str, Any], int]] = {
    "dsb2018": ("dsb2018", {"n_images": 24, "height": SIZE, "width": SIZE, "n_nuclei": 30}, {}, 0),
    "deepcell": (
        "deepcell_npz",
        {"n_images": 32, "height": 192, "width": 192, "frames_per_movie": 4, "n_nuclei": 25},
        {"frames_per_movie": 4},
        1,
    ),
    "pcna_stage3": (
        "pcna_masks",
        {"n_movies": 8, "n_frames": 4, "height": 256, "width": 256, "n_nuclei": 30},
        {},
        2,
    ),
    "synthetic_nuclei": ("dsb2018", {"n_images": 32, "height": SIZE, "width": SIZE, "n_nuclei": 30}, {}, 3),
    "unseen_style": (
        "dsb2018",
        {"n_images": 16, "height": SIZE, "width": SIZE, "n_nuclei": 30, "style": UNSEEN},
        {"val_fraction": 0.5},
        4,
    ),
}
# the other formats the project reads, written and converted with their defaults (as the demo shows)
EXTRA_SETS = {
    fmt: (fmt, {}, {}, 5 + i)
    for i, fmt in enumerate(("bbbc039", "ctc", "deepcell_trks", "livecell", "pcna_via"))
}
CAMPAIGN_SETS.update(EXTRA_SETS)
DEMO_SETS = ("dsb2018", "deepcell", "pcna_stage3")  # what the quick three-stage campaign needs


def _sources_digest() -> str:
    """One digest of the generator and converter sources: new code → new data."""
    pkg = Path(__file__).resolve().parents[1] / "data"
    files = sorted([*pkg.glob("synthetic/*.py"), *pkg.glob("converters/*.py"), pkg / "coco_io.py"])
    return fingerprint([[f.name, file_digest(f)] for f in files if f.is_file()])


def recipe(name: str, seed: int) -> dict[str, Any]:
    """What makes folder ``name`` (JSON-able): compared with ``made_by.json`` to decide reuse."""
    fmt, opts, conv, offset = CAMPAIGN_SETS[name]
    shown = {k: (asdict(v) if isinstance(v, Realism) else v) for k, v in opts.items()}
    return {
        "format": fmt,
        "options": json.loads(json.dumps(shown, default=list)),
        "style": "custom" if "style" in opts else "realistic",
        "converter": conv,
        "seed": seed + offset,
        "sources": _sources_digest(),
    }


def prepare_set(root: Path, raw: Path, name: str, seed: int = 0) -> dict[str, Any]:
    """Write + convert one set unless ``root/name`` was made by the same recipe; a summary row."""
    from pcna_seg.data.coco_io import load_coco
    from pcna_seg.data.converters import get_converter
    from pcna_seg.data.synthetic import get_writer

    fmt, opts, conv, _ = CAMPAIGN_SETS[name]
    want = recipe(name, seed)
    out = root / name
    made = out / MADE_BY
    t0 = time.perf_counter()
    reused = made.is_file() and json.loads(made.read_text(encoding="utf-8")) == want
    if not reused:  # raw and converted folders are remade whole: no file of an older recipe stays
        for folder in (out, raw / name):
            if folder.exists():
                shutil.rmtree(folder)
        options = {"style": "realistic", **opts}
        get_writer(fmt)(raw / name, seed=want["seed"], **options)
        get_converter(fmt)(raw / name, out, seed=want["seed"], progress=False, **conv)
        write_json_atomic(made, want, indent=1)
    card = json.loads((out / "dataset_card.json").read_text(encoding="utf-8"))
    records, meta = load_coco(out / "annotations.json")
    return {
        "dataset": name,
        "format": fmt,
        "images": len(records),
        "instances": sum(len(r["annotations"]) for r in records),
        "classes": meta["thing_classes"],
        "split": card.get("split") or {},
        "reused": reused,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def prepare_campaign_data(
    root: str | Path,
    raw: str | Path | None = None,
    names: tuple[str, ...] | list[str] | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Make (or reuse) each named set under ``root`` (raw files under ``raw``, default
    ``root/../raw``); one row per set: images, instances, classes, split, reused, seconds."""
    names = list(names) if names is not None else [n for n in CAMPAIGN_SETS if n not in EXTRA_SETS]
    root = Path(root)
    raw = Path(raw) if raw is not None else root.parent / "raw"
    unknown = [n for n in names if n not in CAMPAIGN_SETS]
    if unknown:
        from pcna_seg.errors import ConfigError

        raise ConfigError(f"Unknown campaign data set {unknown[0]!r}; known: {', '.join(CAMPAIGN_SETS)}")
    root.mkdir(parents=True, exist_ok=True)
    rows = [prepare_set(root, raw, n, seed) for n in names]
    for r in rows:
        logger.info(
            "%s: %s", r["dataset"], "reused (same recipe)" if r["reused"] else "written and converted"
        )
    return rows


def data_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of :func:`prepare_campaign_data` rows."""
    head = f"{'dataset':<17} {'format':<13} {'images':>6} {'instances':>9}  {'split (train/val)':<20} classes"
    lines = [head, "-" * len(head)]
    for r in rows:
        sp = r["split"]
        split = f"{sp.get('train', '?')}/{sp.get('val', '?')} by {sp.get('by', '?')}"
        lines.append(
            f"{r['dataset']:<17} {r['format']:<13} {r['images']:>6} {r['instances']:>9}  {split:<20} "
            f"{', '.join(r['classes'])}{'  (reused)' if r['reused'] else ''}"
        )
    return "\n".join(lines)
