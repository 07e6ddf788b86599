import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pcna_seg.data.structures import (
    labels_to_masks,
    make_annotation,
    mask_to_bbox,
    mask_to_polygons,
    mask_to_rle,
    masks_to_labels,
    polygons_to_mask,
    resolve_overlaps,
    rle_to_mask,
    segmentation_to_mask,
)
from pcna_seg.data.synthetic.nuclei import make_pcna_frame
from pcna_seg.errors import DataError


def test_rle_roundtrip_exact_on_synthetic_nuclei():
    frame = make_pcna_frame(np.random.default_rng(1), 96, 128, n_nuclei=12)
    ids, masks = labels_to_masks(frame.labels)
    assert len(ids) == frame.n_instances > 0
    for m in masks:
        rle = mask_to_rle(m)
        assert isinstance(rle["counts"], str)
        assert rle["size"] == [96, 128]
        np.testing.assert_array_equal(rle_to_mask(rle), m)
    np.testing.assert_array_equal(masks_to_labels(masks, frame.labels.shape), frame.labels)


def test_bbox_from_mask_tall_thin_object():
    m = np.zeros((50, 40), bool)
    m[5:45, 10:13] = True  # tall and thin: ymax must come from max(y), not min(y)
    assert mask_to_bbox(m) == [10.0, 5.0, 3.0, 40.0]
    assert mask_to_bbox(np.zeros((4, 4), bool)) == [0.0, 0.0, 0.0, 0.0]


def test_polygons_roundtrip_through_rasterisation():
    m = np.zeros((64, 64), bool)
    m[10:30, 20:50] = True
    polys = mask_to_polygons(m)
    back = polygons_to_mask(polys, 64, 64)
    # polygon rasterisation is lossy only at the outline
    iou = (back & m).sum() / (back | m).sum()
    assert iou > 0.9
    assert np.array_equal(segmentation_to_mask(mask_to_rle(m), 64, 64), m)
    with pytest.raises(DataError, match="does not match"):
        segmentation_to_mask(mask_to_rle(m), 32, 64)


def test_resolve_overlaps_smallest_keeps_pixels():
    big = np.zeros((20, 20), bool)
    big[2:15, 2:15] = True
    small = np.zeros((20, 20), bool)
    small[10:18, 10:18] = True
    (b, s), n = resolve_overlaps([big, small])
    assert n == 25
    assert s.sum() == small.sum()  # small keeps all of its pixels
    assert not (b & s).any()
    assert (b | s).sum() == (big | small).sum()


def test_make_annotation_area_and_box():
    m = np.zeros((10, 10), bool)
    m[2:5, 3:9] = True
    ann = make_annotation(m, 2)
    assert ann["area"] == 18.0
    assert ann["bbox"] == [3.0, 2.0, 6.0, 3.0]
    assert ann["category_id"] == 2
    rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
    assert mask_utils.area(rle) == 18


def test_labels_to_masks_rejects_bad_labels():
    with pytest.raises(DataError, match="integers"):
        labels_to_masks(np.full((4, 4), 0.5))
    with pytest.raises(DataError, match="2-D"):
        labels_to_masks(np.zeros((2, 4, 4), np.int32))
