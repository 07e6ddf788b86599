"""COCO JSON ↔ records, dataset cards, and the standard prepared-dataset folder.

A prepared dataset folder (what every converter writes)::

    OUT/annotations.json      COCO, all images (file_name relative to OUT)
    OUT/train.json, val.json  COCO subsets from the leak-free split (see splits.py); test.json
                              when the source names test images
    OUT/split.json            {"train": [image ids], "val": [...], "by": "sequence"|"image", "seed"}
    OUT/dataset_card.json     counts per class, image sizes, dtype, intensity range
    OUT/images/...            image files

Records (DESIGN.md) use 0-based contiguous ``category_id`` (index into ``thing_classes``);
COCO JSON uses ids 1..K in the same order. ``file_name`` and ``channels`` paths are absolute
in records and relative to the JSON's folder on disk.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pcna_seg.errors import DataError
from pcna_seg.utils_io import write_json_atomic

logger = logging.getLogger(__name__)

Record = dict[str, Any]

_IMAGE_KEYS = ("sequence", "frame")


def read_json(path: str | os.PathLike, what: str = "") -> Any:
    """The parsed JSON of ``path``; DataError naming the file when it cannot be read or parsed.

    ``what`` prefixes the path in messages (e.g. ``"VIA project "``).
    """
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"Malformed JSON in {what}{path}: {exc.msg} at line {exc.lineno}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read {what}{path}: {getattr(exc, 'strerror', None) or exc}") from None


def _rel(path: str, root: Path) -> str:
    p = Path(path)
    try:
        return p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(p.resolve())


def records_to_coco(records: list[Record], class_names: list[str], root: str | os.PathLike) -> dict[str, Any]:
    """Build a COCO dict from records; paths become relative to ``root`` when inside it."""
    root = Path(root)
    images, annotations = [], []
    ann_id = 1
    for rec in records:
        img = {
            "id": rec["image_id"],
            "file_name": _rel(rec["file_name"], root),
            "height": int(rec["height"]),
            "width": int(rec["width"]),
        }
        for key in _IMAGE_KEYS:
            if key in rec:
                img[key] = rec[key]
        if rec.get("channels"):
            img["channels"] = {k: _rel(v, root) for k, v in rec["channels"].items()}
        images.append(img)
        for ann in rec.get("annotations", []):
            cid = int(ann["category_id"])
            if not 0 <= cid < len(class_names):
                raise DataError(f"category_id {cid} outside classes {class_names} in {rec['file_name']}")
            out = {
                "id": ann_id,
                "image_id": rec["image_id"],
                "category_id": cid + 1,
                "segmentation": ann["segmentation"],
                "bbox": [float(v) for v in ann["bbox"]],
                "area": float(ann.get("area", ann["bbox"][2] * ann["bbox"][3])),
                "iscrowd": int(ann.get("iscrowd", 0)),
            }
            for key, value in ann.items():
                if key not in out and key not in ("bbox_mode",):
                    out[key] = value
            annotations.append(out)
            ann_id += 1
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]
    return {
        "info": {"description": "pcna_seg prepared dataset", "version": "1.0"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def write_coco(path: str | os.PathLike, records: list[Record], class_names: list[str]) -> Path:
    """Write records as COCO JSON atomically (paths relative to the JSON's folder)."""
    path = Path(path)
    return write_json_atomic(path, records_to_coco(records, class_names, path.parent))


def _check_entries(path: Path, section: str, entries: Any, keys: tuple[str, ...]) -> None:
    """DataError naming the file, section and entry when an entry is not a dict with ``keys``."""
    if not isinstance(entries, list):
        raise DataError(f"{path}: '{section}' must be a list, got {type(entries).__name__}")
    for i, entry in enumerate(entries):
        missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
        if missing:
            ident = entry.get("id", i) if isinstance(entry, dict) else i
            raise DataError(f"{path}: {section} entry {ident} has no {', '.join(missing)}")


def load_coco(path: str | os.PathLike) -> tuple[list[Record], dict[str, Any]]:
    """Read a COCO JSON into (records, metadata); ``metadata["thing_classes"]`` holds names.

    Accepts ``annotations`` as a list or as a dict keyed by id (LIVECell style). Category ids
    are mapped to contiguous 0-based indices in the order of sorted ids. An image entry without
    ``id``/``file_name``/``height``/``width``, an annotation without ``image_id``/``category_id``
    /``segmentation``, or a category without ``id``/``name`` is a DataError naming the file and
    the entry; annotations of images the file does not list are dropped with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"COCO file not found: {path}")
    data = read_json(path)
    if not isinstance(data, dict) or "images" not in data:
        raise DataError(f"{path} is not a COCO file (no 'images' list)")
    _check_entries(path, "categories", data.get("categories", []), ("id", "name"))
    _check_entries(path, "images", data["images"], ("id", "file_name", "height", "width"))
    cats = sorted(data.get("categories", []), key=lambda c: c["id"])
    id_map = {c["id"]: i for i, c in enumerate(cats)}
    anns = data.get("annotations", [])
    if isinstance(anns, dict):
        anns = list(anns.values())
    _check_entries(path, "annotations", anns, ("image_id", "category_id", "segmentation"))
    by_image: dict[Any, list[dict]] = {}
    for ann in anns:
        by_image.setdefault(ann["image_id"], []).append(ann)
    empty = sum(1 for a in anns if not a["segmentation"])
    if empty:
        logger.warning("%s: %d annotation(s) have an empty segmentation; they are ignored", path, empty)
    orphans = set(by_image) - {img["id"] for img in data["images"]}
    if orphans:
        n = sum(len(by_image[i]) for i in orphans)
        logger.warning(
            "%s: %d annotation(s) point at %d image id(s) the file does not list (e.g. %r); they are ignored",
            path,
            n,
            len(orphans),
            sorted(orphans, key=str)[0],
        )
    root = path.parent
    records = []
    for img in data["images"]:
        rec: Record = {
            "file_name": str((root / img["file_name"]).resolve()),
            "height": int(img["height"]),
            "width": int(img["width"]),
            "image_id": img["id"],
        }
        for key in _IMAGE_KEYS:
            if key in img:
                rec[key] = img[key]
        if img.get("channels"):
            rec["channels"] = {k: str((root / v).resolve()) for k, v in img["channels"].items()}
        rec_anns = []
        for ann in by_image.get(img["id"], []):
            if ann["category_id"] not in id_map:
                raise DataError(
                    f"{path}: annotation {ann.get('id')} has unknown category_id {ann['category_id']}"
                )
            out = {k: v for k, v in ann.items() if k not in ("id", "image_id")}
            out["category_id"] = id_map[ann["category_id"]]
            out["bbox_mode"] = "XYWH_ABS"
            out.setdefault("iscrowd", 0)
            rec_anns.append(out)
        rec["annotations"] = rec_anns
        records.append(rec)
    meta = {"thing_classes": [c["name"] for c in cats], "json_file": str(path), "evaluator_type": "coco"}
    return records, meta


class CardBuilder:
    """Accumulates a dataset card (counts per class, sizes, dtypes, intensity range)."""

    def __init__(self, name: str, class_names: list[str], source_format: str) -> None:
        self.name = name
        self.class_names = list(class_names)
        self.source_format = source_format
        self.n_images = 0
        self.n_blank = 0
        self.class_counts: Counter[str] = Counter()
        self.sizes: Counter[str] = Counter()
        self.dtypes: Counter[str] = Counter()
        self.sequences: set[str] = set()
        self.vmin = float("inf")
        self.vmax = float("-inf")
        self.notes: list[str] = []

    def add(self, record: Record, pixels: np.ndarray | None = None) -> None:
        """Count one record; ``pixels`` (the image as read) updates dtype and intensity range."""
        self.n_images += 1
        anns = record.get("annotations", [])
        if not anns:
            self.n_blank += 1
        for ann in anns:
            self.class_counts[self.class_names[int(ann["category_id"])]] += 1
        self.sizes[f"{record['height']}x{record['width']}"] += 1
        if "sequence" in record:
            self.sequences.add(str(record["sequence"]))
        if pixels is not None:
            self.dtypes[str(pixels.dtype)] += 1
            self.vmin = min(self.vmin, float(np.min(pixels)))
            self.vmax = max(self.vmax, float(np.max(pixels)))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source_format": self.source_format,
            "images": self.n_images,
            "blank_images": self.n_blank,
            "instances": int(sum(self.class_counts.values())),
            "instances_per_class": {c: int(self.class_counts.get(c, 0)) for c in self.class_names},
            "classes": self.class_names,
            "image_sizes": dict(self.sizes.most_common()),
            "dtypes": dict(self.dtypes),
            "intensity_range": [self.vmin, self.vmax] if self.dtypes else None,
            "sequences": len(self.sequences),
            "notes": self.notes,
        }


def write_prepared_dataset(
    out_dir: str | os.PathLike,
    records: list[Record],
    class_names: list[str],
    card: CardBuilder,
    val_fraction: float = 0.2,
    seed: int = 0,
    split: dict[str, list[Any]] | None = None,
) -> dict[str, Path]:
    """Write annotations.json, the split (train/val COCO + split.json) and the dataset card.

    ``split`` may give explicit {"train": ids, "val": ids}; otherwise a leak-free split is made
    by sequence (when every record has one) or by image, seeded. Each file is atomic.
    """
    from pcna_seg.data.splits import SPLITS, TEST, TRAIN, VAL, split_records

    out = Path(out_dir)
    paths = {"annotations": write_coco(out / "annotations.json", records, class_names)}
    if split is None:
        split = split_records(records, val_fraction=val_fraction, seed=seed)
    names = [n for n in SPLITS if n != TEST or split.get(TEST)]
    ids = {name: set(split.get(name, [])) for name in names}
    for name in names:
        subset = [r for r in records if r["image_id"] in ids[name]]
        paths[name] = write_coco(out / f"{name}.json", subset, class_names)
    paths["split"] = write_json_atomic(out / "split.json", split, indent=1)
    card_dict = card.to_dict()
    card_dict["split"] = {k: len(ids[k]) for k in (TRAIN, VAL)} | {"by": split.get("by", "given")}
    paths["card"] = write_json_atomic(out / "dataset_card.json", card_dict, indent=2)
    return paths
