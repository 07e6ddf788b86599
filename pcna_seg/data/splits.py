"""Leak-free, seeded train/val splits: by ``sequence`` (movie / well) when known, else by image."""

from __future__ import annotations

from typing import Any

import numpy as np

Record = dict[str, Any]

TRAIN, VAL, TEST = "train", "val", "test"
SPLITS = (TRAIN, VAL, TEST)  # the split names of a prepared folder: <name>.json beside annotations.json


def split_records(records: list[Record], val_fraction: float = 0.2, seed: int = 0) -> dict[str, Any]:
    """Split image ids into train/val so that no sequence has frames in both.

    Groups are the records' ``sequence`` values when every record has one, else single images.
    Groups are shuffled with ``seed`` and taken for validation until ``val_fraction`` of the
    images is reached (at least one group when there are two or more). Returns
    ``{"train": [ids], "val": [ids], "by": "sequence" | "image", "seed": seed}``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    by_seq = bool(records) and all("sequence" in r for r in records)
    groups: dict[str, list[Any]] = {}
    for r in records:
        key = str(r["sequence"]) if by_seq else f"image:{r['image_id']}"
        groups.setdefault(key, []).append(r["image_id"])
    names = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    target = val_fraction * len(records)
    val: list[Any] = []
    n_val_groups = 0
    for i in order:
        if len(val) >= target or (n_val_groups and n_val_groups >= len(names) - 1):
            break
        if val_fraction == 0:
            break
        val.extend(groups[names[i]])
        n_val_groups += 1
    val_set = set(val)
    train = [r["image_id"] for r in records if r["image_id"] not in val_set]
    val = [r["image_id"] for r in records if r["image_id"] in val_set]
    return {"train": train, "val": val, "by": "sequence" if by_seq else "image", "seed": int(seed)}
