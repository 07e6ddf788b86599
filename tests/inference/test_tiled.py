"""Tiled prediction: windows/cores, merging logic with a fake predictor, tiled == untiled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from pcna_seg.errors import ConfigError
from pcna_seg.inference.predictor import Prediction
from pcna_seg.inference.tiled import predict_tiled, suppress_duplicates, tile_windows

NAMES = ["G1/G2", "S", "M"]


def fake_predictor(channels: dict[str, np.ndarray]) -> Prediction:
    """One instance per connected component of ``pcna > 0``; class and score from the intensity."""
    img = channels["pcna"]
    lab, n = ndimage.label(img > 0)
    masks = np.stack([lab == i for i in range(1, n + 1)]) if n else np.zeros((0, *img.shape), bool)
    boxes = np.zeros((n, 4), np.float32)
    for i, sl in enumerate(ndimage.find_objects(lab)):
        boxes[i] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    vals = np.asarray([img[m].max() for m in masks], np.int64)
    return Prediction.from_masks(masks, boxes, 0.5 + vals / 1000.0, vals % 3, NAMES)


def discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: int) -> np.ndarray:
    """uint16 image with disc ``i`` filled with value ``i + 1``."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape, np.uint16)
    for i, (cy, cx) in enumerate(centres):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i + 1
    return img


def _mask_set(pred: Prediction) -> set[bytes]:
    return {np.packbits(m).tobytes() for m in pred.masks}


def test_windows_cover_the_field_and_cores_partition_it() -> None:
    for h, w, tile, ov in [(300, 260, 128, 48), (128, 128, 128, 32), (50, 700, 256, 64), (257, 256, 256, 0)]:
        wins = tile_windows(h, w, tile, ov)
        count = np.zeros((h, w), np.int32)
        seen = np.zeros((h, w), bool)
        for win in wins:
            assert 0 <= win.y0 < win.y1 <= h and 0 <= win.x0 < win.x1 <= w
            assert win.y1 - win.y0 <= tile and win.x1 - win.x0 <= tile
            assert win.y0 <= win.cy0 < win.cy1 <= win.y1 and win.x0 <= win.cx0 < win.cx1 <= win.x1
            count[win.cy0 : win.cy1, win.cx0 : win.cx1] += 1
            seen[win.y0 : win.y1, win.x0 : win.x1] = True
        assert (count == 1).all() and seen.all()
    with pytest.raises(ConfigError):
        tile_windows(100, 100, 64, 64)


def test_small_image_is_predicted_untiled() -> None:
    img = discs((100, 90), [(20, 20), (60, 70)], 8)
    ch = {"pcna": img, "dic": img}
    a, b = predict_tiled(fake_predictor, ch, tile=128, overlap=32), fake_predictor(ch)
    assert len(a) == len(b) == 2
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_object_cut_by_a_tile_border_is_reported_once_with_its_full_mask() -> None:
    # windows along x: [0, 128) and [72, 200); the disc spans x 108..132 and crosses x = 128
    img = discs((120, 200), [(60, 120)], 12)
    whole = fake_predictor({"pcna": img})
    assert len(fake_predictor({"pcna": img[:, :128]})) == 1  # tile 0 sees a cut piece
    pred = predict_tiled(fake_predictor, {"pcna": img}, tile=128, overlap=56)
    assert len(pred) == 1
    np.testing.assert_array_equal(pred.masks[0], whole.masks[0])
    np.testing.assert_allclose(pred.boxes, whole.boxes)


def test_many_objects_match_the_untiled_result() -> None:
    rng = np.random.default_rng(0)
    centres = [(int(y), int(x)) for y in range(15, 300, 34) for x in range(15, 260, 34)]
    centres = [(y + int(rng.integers(-3, 4)), x + int(rng.integers(-3, 4))) for y, x in centres]
    img = discs((300, 260), centres, 11)
    pred = predict_tiled(fake_predictor, {"pcna": img}, tile=96, overlap=32)
    whole = fake_predictor({"pcna": img})
    assert len(pred) == len(whole) == len(centres)
    assert _mask_set(pred) == _mask_set(whole)
    np.testing.assert_array_equal(np.sort(pred.scores), np.sort(whole.scores))
    assert (pred.to_label_image() > 0).sum() == (img > 0).sum()


def test_duplicates_prefer_whole_masks_then_higher_scores() -> None:
    full = np.zeros((40, 40), bool)
    full[10:30, 10:30] = True
    piece = np.zeros_like(full)
    piece[10:30, 10:18] = True  # 40 % of ``full``, cut by a window edge, higher score
    other = np.zeros_like(full)
    other[12:32, 12:32] = True  # IoU with ``full`` ≈ 0.68
    apart = np.zeros_like(full)
    apart[20:40, 20:40] = True  # IoU with ``full`` ≈ 0.14
    boxes = np.zeros((4, 4), np.float32)
    pred = Prediction.from_masks(
        np.stack([full, piece, other, apart]), boxes, [0.6, 0.95, 0.5, 0.4], [0] * 4, NAMES
    )
    # after sorting by score: piece (0.95), full (0.6), other (0.5), apart (0.4)
    cut = np.array([True, False, False, False])
    keep = suppress_duplicates(pred, cut)
    kept = pred.select(keep)
    assert kept.scores.tolist() == pytest.approx([0.6, 0.4])
    # without the cut flag the higher score wins, as plain IoU suppression would do
    keep = suppress_duplicates(pred, np.zeros(4, bool))
    assert pred.select(keep).scores.tolist() == pytest.approx([0.95, 0.6, 0.4])


@pytest.mark.slow
def test_real_predictor_tiled_equals_untiled_on_a_small_image(tmp_path: Path) -> None:
    from test_predictor import make_checkpoint

    from pcna_seg.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(make_checkpoint(tmp_path))
    rng = np.random.default_rng(0)
    img = discs((90, 100), [(30, 30), (60, 70)], 10) * 300 + rng.integers(0, 50, (90, 100)).astype(np.uint16)
    ch = {"pcna": img, "dic": rng.integers(0, 1000, (90, 100)).astype(np.uint16)}
    a, b = predict_tiled(predictor, ch, tile=128, overlap=32), predictor.predict_arrays(ch)
    assert len(a) == len(b) > 0
    np.testing.assert_array_equal(a.masks, b.masks)
    big = predict_tiled(predictor, ch, tile=64, overlap=16)  # 4 windows: runs, stays in the field
    assert big.image_size == (90, 100) and big.to_label_image().shape == (90, 100)


def test_blank_field_gives_no_instances() -> None:
    pred = predict_tiled(fake_predictor, {"pcna": np.zeros((200, 150), np.uint16)}, tile=64, overlap=16)
    assert len(pred) == 0 and pred.image_size == (200, 150) and pred.class_names == NAMES
