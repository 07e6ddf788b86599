"""Tiled prediction for fields larger than the training images (e.g. 2048 x 2048 microscope fields).

The field is cut into overlapping ``tile`` x ``tile`` windows (stride ``tile - overlap``; the
last window of a row/column is moved back so it ends at the image border). Each window is
predicted on its own, its instances are shifted back into the field, and:

1. core rule: an instance is kept only from the window whose *core* holds the centre of its
   box. Cores split every overlap at its middle (the window minus half the overlap on each
   inner side), so the cores tile the field exactly;
2. duplicates left over (an instance near a core border seen by two windows) are suppressed
   greedily: instances that do not touch an inner window edge come first, then by decreasing
   score; a candidate is dropped when its mask IoU with a kept instance is > ``iou_thresh``, or
   when it touches an inner window edge (it is cut) and more than half of it lies inside a kept
   instance. So an object cut by one window border is reported once, with its full mask from
   the window that saw it whole.

Objects are seen whole by some window when ``overlap`` is at least the largest object diameter
(in model pixels; the native diameter times ``INPUT.SCALE.FACTOR``); choose it so.

With a :class:`~pcna_seg.inference.predictor.Predictor`, channels are normalised (percentiles,
Otsu mask) once on the WHOLE field and the field is brought to the model's pixel scale once;
windows of those planes are predicted without any further resize, so tiles share one
intensity scale and one nucleus size (tile and overlap are in model pixels). Any other
callable ``(channels) -> Prediction`` gets windows of the raw channel arrays (that is how the
tests check the logic without a model).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pcna_seg.data.tiles import axis_windows, check_overlap
from pcna_seg.errors import ConfigError, DataError
from pcna_seg.inference.predictor import Prediction, Predictor

logger = logging.getLogger(__name__)

PredictFn = Callable[[dict[str, np.ndarray]], Prediction]


@dataclass(frozen=True)
class Window:
    """One tile: pixels [y0, y1) x [x0, x1) of the field; its core [cy0, cy1) x [cx0, cx1)."""

    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int


def tile_windows(height: int, width: int, tile: int, overlap: int) -> list[Window]:
    """The windows covering an (height, width) field, row by row; their cores partition it."""
    check_overlap(tile, overlap, "--tile", "--overlap")
    return [
        Window(y0, y1, x0, x1, cy0, cy1, cx0, cx1)
        for (y0, y1, cy0, cy1) in axis_windows(height, tile, overlap)
        for (x0, x1, cx0, cx1) in axis_windows(width, tile, overlap)
    ]


def _cut_flags(pred: Prediction, win: Window, height: int, width: int) -> np.ndarray:
    """bool (N,): instance mask touches an edge of ``win`` that lies inside the field."""
    th, tw = win.y1 - win.y0, win.x1 - win.x0
    flags = np.zeros(len(pred), dtype=bool)
    for i, (crop, (y, x)) in enumerate(zip(pred.mask_crops, pred.mask_offsets)):
        top = y == 0 and win.y0 > 0
        left = x == 0 and win.x0 > 0
        bottom = y + crop.shape[0] >= th and win.y1 < height
        right = x + crop.shape[1] >= tw and win.x1 < width
        flags[i] = top or left or bottom or right
    return flags


def _overlap(pred: Prediction, i: int, j: int) -> int:
    """Pixels shared by the masks of instances ``i`` and ``j``."""
    (yi, xi), (yj, xj) = pred.mask_offsets[i], pred.mask_offsets[j]
    ci, cj = pred.mask_crops[i], pred.mask_crops[j]
    y0, x0 = max(yi, yj), max(xi, xj)
    y1, x1 = min(yi + ci.shape[0], yj + cj.shape[0]), min(xi + ci.shape[1], xj + cj.shape[1])
    if y1 <= y0 or x1 <= x0:
        return 0
    a = ci[y0 - yi : y1 - yi, x0 - xi : x1 - xi]
    b = cj[y0 - yj : y1 - yj, x0 - xj : x1 - xj]
    return int(np.count_nonzero(a & b))


def suppress_duplicates(pred: Prediction, cut: np.ndarray, iou_thresh: float = 0.5) -> np.ndarray:
    """Indices of ``pred`` to keep (see the module docstring, rule 2), in decreasing score order."""
    n = len(pred)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    areas = pred.areas()
    y0, x0 = pred.mask_offsets[:, 0], pred.mask_offsets[:, 1]
    y1 = y0 + np.asarray([c.shape[0] for c in pred.mask_crops])
    x1 = x0 + np.asarray([c.shape[1] for c in pred.mask_crops])
    order = np.lexsort((-pred.scores, cut))  # whole instances first, then by score
    kept: list[int] = []
    for i in order:
        if kept:
            k = np.asarray(kept)
            near = k[(y0[k] < y1[i]) & (y0[i] < y1[k]) & (x0[k] < x1[i]) & (x0[i] < x1[k])]
            dup = False
            for j in near:
                inter = _overlap(pred, i, j)
                iou = inter / max(areas[i] + areas[j] - inter, 1)
                if iou > iou_thresh or (cut[i] and inter > 0.5 * areas[i]):
                    dup = True
                    break
            if dup:
                continue
        kept.append(int(i))
    kept_arr = np.asarray(kept, dtype=np.int64)
    return kept_arr[np.argsort(-pred.scores[kept_arr], kind="stable")]


def check_tile_size(tile: int, overlap: int, diameter: float) -> None:
    """Tiles must hold whole nuclei: ConfigError when ``tile`` < 2 × the model's nucleus diameter
    (model px, 0 = unknown); a warning when ``overlap`` is smaller than one diameter."""
    if diameter <= 0:
        return
    if tile < 2 * diameter:
        raise ConfigError(
            f"--tile {tile} is too small for the nuclei this model was trained on (about {diameter:.0f} px "
            f"across at model scale); use --tile >= {int(np.ceil(4 * diameter))} and --overlap >= "
            f"{int(np.ceil(1.5 * diameter))}"
        )
    if overlap < diameter:
        logger.warning(
            "--overlap %d is smaller than the nuclei (about %.0f px at model scale): nuclei on tile "
            "borders may be cut; use --overlap >= %d",
            overlap,
            diameter,
            int(np.ceil(1.5 * diameter)),
        )


def predict_tiled(
    predictor: Predictor | PredictFn,
    channels: dict[str, np.ndarray],
    tile: int = 512,
    overlap: int = 64,
    iou_thresh: float = 0.5,
) -> Prediction:
    """Predict a field of any size window by window; one merged Prediction at the field's size.

    ``channels``: raw {name: (H, W)} arrays (all the same size). With a :class:`Predictor`, the
    whole field is normalised and brought to the model's pixel scale ONCE, windows of ``tile``
    model pixels (``overlap`` model pixels) are predicted at that scale, merged, and the result
    is mapped back to the field's pixels: a nucleus has the same size in every tile, in an
    untiled prediction and in training. A field no larger than one tile is predicted in one call.
    """
    if isinstance(predictor, Predictor):
        check_tile_size(tile, overlap, predictor.pipeline.scale.model_diameter())
        native = predictor.normalize(channels)
        field = predictor.to_model_scale(native, predictor.input_diameter(channels))
        image = field.image.numpy()
        planes = {name: image[i] for i, name in enumerate(predictor.recipe)}
        fn: PredictFn = predictor.predict_model_planes
        orig_hw = field.orig_hw
    else:
        planes, fn = dict(channels), predictor
        orig_hw = None
    shapes = {np.asarray(a).shape[:2] for a in planes.values()}
    if len(shapes) != 1:
        raise DataError(f"Channels differ in size: {sorted(shapes)}")
    height, width = shapes.pop()
    windows = tile_windows(height, width, tile, overlap)
    if len(windows) == 1:
        merged = fn(planes)
        return merged if orig_hw is None else merged.rescaled(orig_hw)
    parts, cuts = [], []
    for win in windows:
        crop = {k: v[win.y0 : win.y1, win.x0 : win.x1] for k, v in planes.items()}
        pred = fn(crop)
        cut = _cut_flags(pred, win, height, width)
        cx = (pred.boxes[:, 0] + pred.boxes[:, 2]) / 2 + win.x0
        cy = (pred.boxes[:, 1] + pred.boxes[:, 3]) / 2 + win.y0
        core = (cy >= win.cy0) & (cy < win.cy1) & (cx >= win.cx0) & (cx < win.cx1)
        parts.append(pred.select(core).shifted(win.y0, win.x0, (height, width)))
        cuts.append(cut[core])
    class_names = parts[0].class_names
    # concat sorts by score: sort the cut flags the same way
    flat_scores = np.concatenate([p.scores for p in parts])
    cut_all = np.concatenate(cuts)[np.argsort(-flat_scores, kind="stable")]
    merged = Prediction.concat(parts, (height, width), class_names)
    keep = suppress_duplicates(merged, cut_all, iou_thresh)
    logger.debug(
        "Tiled %dx%d field: %d windows, %d → %d instances",
        height,
        width,
        len(windows),
        len(merged),
        len(keep),
    )
    out = merged.select(keep)
    return out if orig_hw is None else out.rescaled(orig_hw)
