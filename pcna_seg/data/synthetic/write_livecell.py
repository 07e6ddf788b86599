"""Synthetic LIVECell folder: 8-bit TIFFs by cell type + COCO JSON with polygon outlines.

Layout written under ``out``::

    images/livecell_train_val_images/<cell type>/<cell>_Phase_<well>_<loc>_<time>_<crop>.tif
    annotations/LIVECell/livecell_coco_train.json   (+ livecell_coco_val.json with split_files)

The JSON follows LIVECell: ``annotations`` is a dict keyed by the annotation id (as a string),
``segmentation`` is a list of polygons, one category ``cell``.

Outlines are traced (``mask_to_polygons``) around each nucleus grown by one pixel, so touching
neighbours' polygons overlap as LIVECell's do. Polygons are lossy relative to a label image:
outlines traced with ``mask_to_polygons`` and
rasterised back by pycocotools differ from the original pixels along the boundary and may
overlap their neighbours. So the ground truth is defined from the polygons written: each
polygon is rasterised with ``structures.polygons_to_mask``, overlaps are resolved with
``structures.resolve_overlaps`` (smallest keeps contested pixels) and instances left empty are
left out. The round-trip is exact relative to the polygons, not to the generator's labels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from pcna_seg.data.boxes import mask_to_bbox
from pcna_seg.data.image_io import write_image
from pcna_seg.data.structures import (
    labels_to_masks,
    mask_to_polygons,
    masks_to_labels,
    polygons_to_mask,
    resolve_overlaps,
)
from pcna_seg.data.synthetic.base import GroundTruth, GroundTruthImage
from pcna_seg.data.synthetic.nuclei import make_nuclei_image
from pcna_seg.data.synthetic.realism import Realism, resolve
from pcna_seg.data.synthetic.write_dsb2018 import to_uint8
from pcna_seg.utils_io import write_json_atomic

FIELDS = [("A172", "C7", 1), ("A172", "C7", 2), ("BV2", "B4", 1)]
TIMES = ["00d00h00m", "00d04h00m", "00d08h00m"]


def write(
    out: str | os.PathLike,
    *,
    seed: int = 0,
    n_images: int = 6,
    height: int = 120,
    width: int = 160,
    n_nuclei: int = 30,
    split_files: bool = False,
    style: str | Realism = "clean",
) -> GroundTruth:
    """Write a LIVECell-layout folder under ``out`` and return the polygons' exact ground truth.

    Image ``i`` belongs to field ``FIELDS[i % 3]`` at timepoint ``TIMES[i // 3]`` (so each
    field is a sequence of timepoints); the last image has no cells. With ``split_files`` the
    images of the last field go to ``livecell_coco_val.json``, the rest to ``..._train.json``.
    Real LIVECell images are 704 x 520 (``width=704, height=520``).
    ``style``: "clean" (default) or "realistic" / a ``Realism`` (acquisition simulator).
    """
    out = Path(out)
    realism = resolve(style)
    rng = np.random.default_rng(seed)
    gt = GroundTruth(format="livecell", class_names=["cell"])
    docs = {
        name: {
            "images": [],
            "annotations": {},
            "categories": [{"id": 1, "name": "cell", "supercategory": "cell"}],
        }
        for name in ("train", "val")
    }
    ann_id = 1
    for i in range(n_images):
        cell, well, loc = FIELDS[i % len(FIELDS)]
        stem = f"{cell}_Phase_{well}_{loc}_{TIMES[(i // len(FIELDS)) % len(TIMES)]}_{i // 9 + 1}"
        frame = make_nuclei_image(
            rng, height, width, n_nuclei, blank=n_images >= 2 and i == n_images - 1, realism=realism
        )
        write_image(
            out / "images" / "livecell_train_val_images" / cell / f"{stem}.tif",
            to_uint8(frame.channels["gray"]),
        )
        doc = docs["val" if split_files and i % len(FIELDS) == len(FIELDS) - 1 else "train"]
        image_id = 1000 + i
        doc["images"].append({"id": image_id, "file_name": f"{stem}.tif", "width": width, "height": height})
        polys, masks = [], []
        for m in labels_to_masks(frame.labels)[1]:
            grown = ndimage.binary_dilation(m)  # outline on the cell edge: neighbours' polygons overlap
            p = [[round(v, 2) for v in poly] for poly in mask_to_polygons(grown)]
            rast = polygons_to_mask(p, height, width)
            if rast.any():
                polys.append(p)
                masks.append(rast)
        for p, m in zip(polys, masks):
            doc["annotations"][str(ann_id)] = {
                "id": ann_id,
                "image_id": image_id,
                "category_id": 1,
                "segmentation": p,
                "area": float(m.sum()),
                "bbox": mask_to_bbox(m),
                "iscrowd": 0,
            }
            ann_id += 1
        resolved, _ = resolve_overlaps(masks)
        labels = masks_to_labels([m for m in resolved if m.any()], (height, width))
        n = int(labels.max(initial=0))
        seq = f"{cell}_{well}_{loc}"
        gt.images.append(GroundTruthImage(stem, labels, dict.fromkeys(range(1, n + 1), "cell"), seq))
    ann_dir = out / "annotations" / "LIVECell"
    write_json_atomic(ann_dir / "livecell_coco_train.json", docs["train"])
    if split_files:
        write_json_atomic(ann_dir / "livecell_coco_val.json", docs["val"])
    return gt
