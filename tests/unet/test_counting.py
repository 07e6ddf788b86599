"""Counting: k blobs count k, empty counts 0, MAE, CSV."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from pcna_seg.evaluation.cell_metrics import count_errors
from pcna_seg.unet.counting import (
    count_objects,
    counts_from_logits,
    counts_from_masks,
    write_counts_csv,
)


def _blobs(k: int, size: int = 64) -> np.ndarray:
    m = np.zeros((size, size), bool)
    for i in range(k):
        y, x = 4 + (i // 5) * 12, 4 + (i % 5) * 12
        m[y : y + 6, x : x + 6] = True
    return m


@pytest.mark.parametrize("k", [0, 1, 3, 7])
def test_k_blobs_count_k(k: int) -> None:
    assert count_objects(_blobs(k)) == k


def test_min_size_and_connectivity() -> None:
    m = _blobs(2)
    m[60, 60] = True  # single pixel speck
    assert count_objects(m) == 3
    assert count_objects(m, min_size=5) == 2
    diag = np.eye(4, dtype=bool)
    assert count_objects(diag, connectivity=8) == 1
    assert count_objects(diag, connectivity=4) == 4


def test_counts_from_logits_and_mae(tmp_path) -> None:
    masks = np.stack([_blobs(k) for k in (0, 2, 5)])
    logits = torch.from_numpy(np.where(masks, 6.0, -6.0)).float()[:, None]
    pred = counts_from_logits(logits)
    assert pred == [0, 2, 5]
    soft = masks.astype(np.float32) * 0.9
    assert counts_from_masks(soft) == [0, 2, 5]
    assert count_errors(pred, [1, 2, 3])["count_mae"] == pytest.approx(1.0)
    out = write_counts_csv(tmp_path / "c.csv", ["a", "b", "c"], pred)
    rows = list(csv.DictReader(open(out)))
    assert [int(r["count"]) for r in rows] == [0, 2, 5]


def test_count_errors_are_one_definition_for_both_branches() -> None:
    out = count_errors([2, 0, 5], [1, 0, 4])  # |1|, |0|, |1|; relative over images with objects
    assert out == {"count_mae": pytest.approx(2 / 3), "count_rel_error": pytest.approx((1 / 1 + 1 / 4) / 2)}
    assert count_errors([3], [0])["count_rel_error"] == 0.0  # no image with objects
    with pytest.raises(ValueError, match="2 predicted counts vs 1 true"):
        count_errors([1, 2], [1])
