"""Shared round-trip check: synthetic ground truth vs. a converter's prepared folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from pcna_seg.data.structures import labels_to_masks, mask_to_bbox, rle_to_mask
from pcna_seg.data.synthetic.base import GroundTruth


def _key(mask: np.ndarray) -> bytes:
    return np.packbits(np.asarray(mask, dtype=bool)).tobytes()


def assert_roundtrip(
    gt: GroundTruth, out: Path, check_sequences: bool = True, check_split: bool = True
) -> COCO:
    """Assert ``out/annotations.json`` holds exactly ``gt``'s instances, classes and sequences.

    Instance masks are compared as sets per image (ids may be permuted); every box must equal
    ``mask_to_bbox`` of its decoded mask; the train/val split shares no sequence (unless
    ``check_split`` is False, for splits given by the dataset itself).
    """
    coco = COCO(str(out / "annotations.json"))
    cat_names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    assert sorted(cat_names.values()) == sorted(gt.class_names)
    gt_by_key = gt.by_key()
    assert set(coco.imgs) == set(gt_by_key), "image ids differ from ground-truth keys"
    for img_id, img in coco.imgs.items():
        g = gt_by_key[img_id]
        h, w = g.labels.shape
        assert (img["height"], img["width"]) == (h, w)
        assert (out / img["file_name"]).is_file()
        if check_sequences and g.sequence:
            assert img.get("sequence") == g.sequence
        ids, gt_masks = labels_to_masks(g.labels)
        expected = {_key(m): g.classes[int(i)] for i, m in zip(ids, gt_masks)}
        got: dict[bytes, str] = {}
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img_id])):
            m = rle_to_mask(ann["segmentation"])
            assert m.shape == (h, w)
            assert ann["bbox"] == mask_to_bbox(m)
            assert ann["area"] == float(m.sum())
            k = _key(m)
            assert k not in got, f"duplicate instance mask in {img_id}"
            got[k] = cat_names[ann["category_id"]]
        assert got.keys() == expected.keys(), f"instance masks of {img_id} differ"
        assert got == expected, f"classes of {img_id} differ"
    if check_split:
        assert_split_leak_free(out)
    return coco


def assert_split_leak_free(out: Path) -> None:
    """train/val in ``split.json`` are disjoint, match train/val.json and share no sequence."""
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"])
    seqs = {}
    for name in ("train", "val"):
        data = json.loads((out / f"{name}.json").read_text())
        assert {im["id"] for im in data["images"]} == set(split[name])
        seqs[name] = {im["sequence"] for im in data["images"] if "sequence" in im}
    assert not seqs["train"] & seqs["val"], "a sequence has images in both train and val"
