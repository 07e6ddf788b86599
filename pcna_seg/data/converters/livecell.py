"""LIVECell (phase-contrast cells, COCO polygons) → prepared COCO folder (format ``livecell``).

On-disk layout (as distributed)::

    annotations/LIVECell/livecell_coco_{train,val,test}.json
    images/livecell_train_val_images/[<cell type>/]<file>.tif     8-bit grey, 704 x 520
    images/livecell_test_images/[<cell type>/]<file>.tif

The JSON's ``annotations`` may be a list or a dict keyed by id (LIVECell uses a dict);
segmentations are polygons (RLE dicts are accepted too). ``src`` is one JSON file, or a folder
holding ``*train*.json`` / ``*val*.json`` / ``*test*.json`` (searched recursively): then the files
define the split (test images go to ``test.json``). Images are found by file name anywhere under
``image_root`` (default: the nearest ``images/`` folder beside or above the JSON).

Polygons are rasterised with ``structures.polygons_to_mask`` (pycocotools), boxes come from the
masks, never from the vertices. LIVECell outlines overlap: contested pixels go to the smallest
instance (the ``structures.resolve_overlaps`` rule, applied on bounding boxes so thousands of
instances per image stay cheap); instances left empty are dropped and counted in the card.
``image_id`` is the file stem; ``sequence`` is ``<cell type>_<well>_<location>`` parsed from
``A172_Phase_C7_1_00d00h00m_1.tif`` so all timepoints and crops of one field share a split.
Images hold up to ~3000 cells, so the card recommends raising ``TEST.MAX_DETS``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from pcna_seg.data.coco_io import CardBuilder, read_json
from pcna_seg.data.converters.base import (
    collect,
    dataset_name,
    finish,
    finish_rles,
    image_summary,
    parallel_map,
    prepared_folder,
    read_gray,
)
from pcna_seg.data.image_io import write_image
from pcna_seg.data.splits import SPLITS
from pcna_seg.errors import DataError

logger = logging.getLogger(__name__)
_NAME = re.compile(
    r"^(?P<cell>[^_]+)_Phase_(?P<well>[A-Za-z]+\d+)_(?P<loc>\d+)_(?P<time>\d+d\d+h\d+m)_(?P<crop>\d+)$"
)


def sequence_of(stem: str) -> str:
    """``A172_Phase_C7_1_00d00h00m_1`` → ``A172_C7_1``; unparsable names are their own sequence."""
    m = _NAME.match(stem)
    return f"{m['cell']}_{m['well']}_{m['loc']}" if m else stem


def recommended_max_dets(max_instances: int) -> list[int]:
    """COCOeval ``maxDets`` for dense images: [100, 500, 2000], last raised to cover the densest."""
    top = max(2000, int(np.ceil(max_instances / 1000.0)) * 1000)
    return [100, 500, top]


class LivecellCard(CardBuilder):
    """Dataset card that also records the densest image and the evaluation settings it needs."""

    max_instances = 0

    def add(self, record: dict[str, Any], pixels: np.ndarray | None = None) -> None:
        super().add(record, pixels)
        self.max_instances = max(self.max_instances, len(record.get("annotations", [])))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        dets = recommended_max_dets(self.max_instances)
        d["max_instances_per_image"] = self.max_instances
        d["evaluation"] = {
            "TEST.MAX_DETS": dets,
            "TEST.DETECTIONS_PER_IMAGE": dets[-1],
            "why": "LIVECell images hold up to ~3000 cells; COCO's default maxDets=100 truncates recall",
        }
        return d


def _segm_rle(segm: Any, h: int, w: int, where: str) -> dict | None:
    if isinstance(segm, list):
        polys = [[float(v) for v in p] for p in segm if len(p) >= 6]
        if not polys:
            return None
        rles = mask_utils.frPyObjects(polys, h, w)
        return rles[0] if len(rles) == 1 else mask_utils.merge(rles)
    if isinstance(segm, dict) and "counts" in segm:
        if list(segm.get("size", [])) != [h, w]:
            raise DataError(f"{where}: RLE size {segm.get('size')} does not match the {h}x{w} image")
        if isinstance(segm["counts"], list):
            return mask_utils.frPyObjects(segm, h, w)
        return {"size": [h, w], "counts": str(segm["counts"]).encode("ascii")}
    raise DataError(f"{where}: unsupported segmentation of type {type(segm).__name__}")


def _convert_one(task: dict[str, Any]) -> dict[str, Any]:
    img_path = Path(task["image"])
    gray = read_gray(img_path)
    h, w = gray.shape
    if (h, w) != (task["height"], task["width"]):
        raise DataError(
            f"{img_path} is {h}x{w} but {task['json']} says {task['height']}x{task['width']} for it"
        )
    write_image(task["out_image"], gray)
    rles, cats, n_empty = [], [], 0
    for ann_id, cat, segm in task["anns"]:
        rle = _segm_rle(segm, h, w, f"{task['json']} annotation {ann_id}")
        if rle is None or int(mask_utils.area(rle)) == 0:
            logger.warning("Skipping empty annotation %s of %s", ann_id, img_path.name)
            n_empty += 1
            continue
        rles.append(rle)
        cats.append(cat)
    anns, n_overlap, n_hidden = finish_rles(rles, h, w, cats)
    rec = {
        "file_name": task["out_image"],
        "height": h,
        "width": w,
        "image_id": task["id"],
        "sequence": task["sequence"],
        "annotations": anns,
    }
    return {
        "record": rec,
        "summary": image_summary(gray),
        "n_empty": n_empty,
        "n_hidden": n_hidden,
        "n_overlap": n_overlap,
    }


def _load_json(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path} is not a COCO file (no 'images' list)")
    return data


def _json_files(src: Path) -> dict[str, Path]:
    if src.is_file():
        return {"": src}
    if not src.is_dir():
        raise DataError(f"LIVECell source not found: {src}")
    found = sorted(src.glob("*.json")) or sorted(src.rglob("*.json"))
    if len(found) == 1:
        return {"": found[0]}
    files = {}
    for key in SPLITS:
        match = [p for p in found if re.search(rf"(^|[_\-.]){key}([_\-.]|$)", p.stem)]
        if len(match) > 1:
            raise DataError(f"Several {key} JSON files in {src}: {', '.join(p.name for p in match)}")
        if match:
            files[key] = match[0]
    if not files:
        raise DataError(f"No LIVECell COCO JSON (*train*.json / *val*.json / *test*.json) found in {src}")
    return files


def _image_index(root: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for p in root.rglob("*"):
        if p.suffix.lower() in (".tif", ".tiff"):
            index.setdefault(p.name, p)
    return index


def _default_image_root(json_path: Path) -> Path:
    for folder in (json_path.parent, *list(json_path.parents)[1:3]):
        if (folder / "images").is_dir():
            return folder / "images"
    return json_path.parent


@prepared_folder
def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    workers: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert a LIVECell COCO JSON (or a folder of train/val/test JSONs) into a prepared dataset.

    ``image_root``: folder searched recursively for the images by file name. Returns the
    dataset card dict; its ``evaluation`` entry gives the ``TEST.MAX_DETS`` to use.
    """
    src, out = Path(src), Path(out)
    files = _json_files(src)
    class_names: list[str] | None = None
    tasks: list[dict[str, Any]] = []
    given: dict[str, list[str]] = {}
    index_cache: dict[Path, dict[str, Path]] = {}
    notes: list[str] = []
    for key, jpath in files.items():
        data = _load_json(jpath)
        cats = sorted(data.get("categories", []), key=lambda c: c["id"])
        names = [str(c["name"]) for c in cats]
        if not names:
            raise DataError(f"{jpath} has no categories")
        if class_names is not None and names != class_names:
            raise DataError(f"{jpath} has categories {names} but another file has {class_names}")
        class_names = names
        cat_index = {c["id"]: i for i, c in enumerate(cats)}
        anns = data.get("annotations", [])
        by_image: dict[Any, list] = {}
        for ann in anns.values() if isinstance(anns, dict) else anns:
            if ann.get("category_id") not in cat_index:
                raise DataError(
                    f"{jpath}: annotation {ann.get('id')} has category_id {ann.get('category_id')}; "
                    f"allowed: {sorted(cat_index)}"
                )
            by_image.setdefault(ann["image_id"], []).append(
                (ann.get("id"), cat_index[ann["category_id"]], ann.get("segmentation"))
            )
        known_ids = {img["id"] for img in data["images"]}
        orphans = [i for i in by_image if i not in known_ids]
        if orphans:
            n = sum(len(by_image[i]) for i in orphans)
            logger.warning(
                "%s: %d annotation(s) point at %d image_id(s) not in its images (first: %r); dropped",
                jpath, n, len(orphans), orphans[0],
            )  # fmt: skip
            notes.append(
                f"{n} annotation(s) in {jpath.name} name an image_id not in its images and were dropped"
            )
        root = Path(image_root) if image_root else _default_image_root(jpath)
        if root not in index_cache:
            index_cache[root] = _image_index(root)
        for img in data["images"]:
            fname = Path(img["file_name"]).name
            path = index_cache[root].get(fname)
            if path is None:
                raise DataError(
                    f"Image file {fname} listed in {jpath} not found under {root} (set image_root)"
                )
            stem = Path(fname).stem
            given.setdefault(key, []).append(stem)
            tasks.append(
                {
                    "id": stem,
                    "image": str(path),
                    "json": str(jpath),
                    "height": int(img["height"]),
                    "width": int(img["width"]),
                    "out_image": str(out / "images" / fname),
                    "sequence": sequence_of(stem),
                    "anns": by_image.get(img["id"], []),
                }
            )
    ids = [t["id"] for t in tasks]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"Image {dup} is listed twice in {', '.join(str(p) for p in files.values())}")
    assert class_names is not None
    card = LivecellCard(dataset_name(out), class_names, "livecell")
    results = parallel_map(_convert_one, tasks, workers, progress, desc="livecell")
    records = collect(results, card)
    for note in notes:
        card.note(note)
    unparsed = sum(not _NAME.match(r["image_id"]) for r in records)
    if unparsed:
        card.note(f"{unparsed} file names did not match <cell>_Phase_<well>_<loc>_<time>_<crop>")
    split = None
    if "" not in given:
        split = {k: given.get(k, []) for k in SPLITS} | {"by": "files", "seed": int(seed)}
        card.note("split taken from " + ", ".join(p.name for p in files.values()))
    return finish(out, records, class_names, card, val_fraction, seed, split)
