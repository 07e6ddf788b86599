"""Detected instances in an image's ORIGINAL pixel frame, with masks kept as box crops.

:class:`Prediction` is what the model's postprocess (:mod:`pcna_seg.modeling.postprocess`)
hands to evaluation, prediction writers and tiling: memory grows with the summed box areas,
never with N × H × W.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from pcna_seg.data.boxes import mask_crop
from pcna_seg.errors import DataError


@dataclass
class Prediction:
    """Instances found in one image, in its ORIGINAL pixel frame, sorted by decreasing score.

    Fields (N instances, K classes):

    - ``image_size``: (H, W) of the original image;
    - ``boxes``: float32 (N, 4) XYXY pixels (the detector's boxes, rescaled);
    - ``scores``: float32 (N,); ``labels``: int64 (N,) 0-based class index into ``class_names``;
    - ``probs_with_bg``: float32 (N, K + 1) the classifier's raw softmax row, background in column 0;
    - ``mask_crops`` / ``mask_offsets``: each mask stored as a bool crop (h_i, w_i) of its own
      bounding box at (y0, x0) = ``mask_offsets[i]`` (int64 (N, 2)) so that a 2048 x 2048 field with
      thousands of nuclei stays small; :attr:`masks` gives the dense (N, H, W) bool array;
    - ``mask_probs``: optional float16 (N, M, M), the mask head's probabilities on each box. When
      present, :meth:`rescaled` pastes them again at the new size (so a tile predicted at model
      scale gives the same masks as a whole image), instead of resampling the crops, with the
      paste rule ``mask_paste`` (:func:`pcna_seg.modeling.postprocess.paste_crops`).

    Instances whose thresholded mask is empty are dropped when a Prediction is built.
    """

    image_size: tuple[int, int]
    class_names: list[str]
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    probs_with_bg: np.ndarray | None = None
    mask_crops: list[np.ndarray] = field(default_factory=list)
    mask_offsets: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    mask_probs: np.ndarray | None = None
    mask_paste: str = "torchvision"

    def __post_init__(self) -> None:
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.class_names = list(self.class_names)
        if self.probs_with_bg is None:
            self.probs_with_bg = np.zeros((len(self.scores), len(self.class_names) + 1), np.float32)

    def __len__(self) -> int:
        return len(self.scores)

    def with_mask_paste(self, mask_paste: str) -> Prediction:
        """Set the paste rule :meth:`rescaled` uses for ``mask_probs``; returns self."""
        self.mask_paste = mask_paste
        return self

    @classmethod
    def from_masks(
        cls,
        masks: np.ndarray,
        boxes: np.ndarray,
        scores: np.ndarray,
        labels: np.ndarray,
        class_names: Sequence[str],
        probs_with_bg: np.ndarray | None = None,
    ) -> Prediction:
        """From dense (N, H, W) bool masks; drops empty masks and sorts by decreasing score."""
        masks = np.asarray(masks, dtype=bool)
        crops = [mask_crop(m) for m in masks]
        return cls.from_crops(masks.shape[1:], class_names, boxes, scores, labels, probs_with_bg, crops)

    @classmethod
    def from_crops(
        cls,
        image_size: tuple[int, int],
        class_names: Sequence[str],
        boxes: np.ndarray,
        scores: np.ndarray,
        labels: np.ndarray,
        probs_with_bg: np.ndarray | None,
        crops: Sequence[tuple[np.ndarray, int, int] | None],
        mask_probs: np.ndarray | None = None,
    ) -> Prediction:
        """From per-instance ``(crop, y0, x0)`` (None = empty mask, dropped); sorted by score.

        ``probs_with_bg`` None: one-hot rows at the label holding the score.
        """
        n = len(crops)
        scores = np.asarray(scores, np.float32).reshape(n)
        labels = np.asarray(labels, np.int64).reshape(n)
        if probs_with_bg is None:
            probs_with_bg = np.zeros((n, len(class_names) + 1), np.float32)
            probs_with_bg[np.arange(n), labels + 1] = scores
        keep = np.asarray([i for i, c in enumerate(crops) if c is not None], dtype=np.int64)
        pred = cls(
            image_size,
            list(class_names),
            np.asarray(boxes, np.float32).reshape(n, 4)[keep],
            scores[keep],
            labels[keep],
            np.asarray(probs_with_bg, np.float32).reshape(n, len(class_names) + 1)[keep],
            [crops[i][0] for i in keep],
            np.asarray([crops[i][1:] for i in keep], np.int64).reshape(-1, 2),
            None if mask_probs is None else np.asarray(mask_probs, np.float16)[keep],
        )
        return pred.select(np.argsort(-pred.scores, kind="stable"))

    # ------------------------------------------------------------------------------ views
    @property
    def masks(self) -> np.ndarray:
        """Dense (N, H, W) bool masks at the original size (N x H x W bytes: mind big fields)."""
        out = np.zeros((len(self), *self.image_size), dtype=bool)
        for i in range(len(self)):
            y, x = self.mask_offsets[i]
            c = self.mask_crops[i]
            out[i, y : y + c.shape[0], x : x + c.shape[1]] = c
        return out

    @property
    def class_probs(self) -> np.ndarray:
        """float32 (N, K): the foreground part of ``probs_with_bg`` renormalised to sum to 1."""
        fg = np.asarray(self.probs_with_bg, np.float32)[:, 1:]
        total = fg.sum(axis=1, keepdims=True)
        return np.divide(fg, total, out=np.zeros_like(fg), where=total > 0)

    @property
    def phases(self) -> list[str]:
        """Class name of each instance."""
        return [self.class_names[int(k)] for k in self.labels]

    def areas(self) -> np.ndarray:
        """int64 (N,) mask areas in pixels (before overlaps are resolved)."""
        return np.asarray([int(c.sum()) for c in self.mask_crops], dtype=np.int64)

    def select(self, idx: Sequence[int] | np.ndarray) -> Prediction:
        """The instances ``idx`` (indices or a bool mask), in that order."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        return Prediction(
            self.image_size,
            self.class_names,
            self.boxes[idx],
            self.scores[idx],
            self.labels[idx],
            np.asarray(self.probs_with_bg)[idx],
            [self.mask_crops[i] for i in idx],
            self.mask_offsets[idx],
            None if self.mask_probs is None else self.mask_probs[idx],
            self.mask_paste,
        )

    def shifted(self, dy: int, dx: int, image_size: tuple[int, int]) -> Prediction:
        """The same instances moved by (dy, dx) into a larger image of ``image_size`` (H, W)."""
        boxes = self.boxes + np.asarray([dx, dy, dx, dy], np.float32)
        return Prediction(
            image_size,
            self.class_names,
            boxes,
            self.scores,
            self.labels,
            self.probs_with_bg,
            list(self.mask_crops),
            self.mask_offsets + np.asarray([dy, dx], np.int64),
            self.mask_probs,
            self.mask_paste,
        )

    @staticmethod
    def concat(
        preds: Sequence[Prediction], image_size: tuple[int, int], class_names: Sequence[str]
    ) -> Prediction:
        """All instances of ``preds`` (already in the frame of ``image_size``), sorted by score."""
        k1 = len(class_names) + 1
        probs = [p.mask_probs for p in preds]
        mask_probs = np.concatenate(probs) if probs and all(p is not None for p in probs) else None
        out = Prediction(
            image_size,
            list(class_names),
            np.concatenate([p.boxes for p in preds] or [np.zeros((0, 4), np.float32)]),
            np.concatenate([p.scores for p in preds] or [np.zeros(0, np.float32)]),
            np.concatenate([p.labels for p in preds] or [np.zeros(0, np.int64)]),
            np.concatenate([np.asarray(p.probs_with_bg) for p in preds] or [np.zeros((0, k1), np.float32)]),
            [c for p in preds for c in p.mask_crops],
            np.concatenate([p.mask_offsets for p in preds] or [np.zeros((0, 2), np.int64)]),
            mask_probs,
            preds[0].mask_paste if preds else "torchvision",
        )
        return out.select(np.argsort(-out.scores, kind="stable"))

    def to_label_image(self) -> np.ndarray:
        """(H, W) uint16 instance labels, 0 = background, instance ``i`` → label ``i + 1``.

        Where masks overlap the higher-scoring instance wins; an instance entirely covered by
        better ones is absent from the image.
        """
        if len(self) > np.iinfo(np.uint16).max:
            raise DataError(f"{len(self)} instances do not fit a uint16 label image")
        out = np.zeros(self.image_size, dtype=np.uint16)
        for i in np.argsort(self.scores, kind="stable"):  # lowest first: higher scores paint over
            y, x = self.mask_offsets[i]
            c = self.mask_crops[i]
            out[y : y + c.shape[0], x : x + c.shape[1]][c] = i + 1
        return out

    def rescaled(self, image_size: tuple[int, int]) -> Prediction:
        """The same instances in a frame of ``image_size`` (H, W) covering the same field.

        Boxes are scaled. With ``mask_probs`` the masks are pasted again from them into the
        scaled boxes (as :func:`~pcna_seg.modeling.postprocess.to_prediction` would have);
        otherwise each crop is resampled (bilinear on its 0/1 values, threshold 0.5). The
        identity when the size is unchanged.
        """
        H, W = int(image_size[0]), int(image_size[1])
        h0, w0 = self.image_size
        if (H, W) == (h0, w0):
            return self
        sy, sx = H / h0, W / w0
        boxes = self.boxes * np.asarray([sx, sy, sx, sy], np.float32)
        if self.mask_probs is not None:
            import torch

            from pcna_seg.modeling.postprocess import paste_crops

            probs = torch.from_numpy(self.mask_probs.astype(np.float32))
            crops = paste_crops(probs, torch.from_numpy(boxes), (H, W), mode=self.mask_paste)
        else:
            crops = []
            for (y, x), c in zip(self.mask_offsets.tolist(), self.mask_crops):
                ya, yb = int(np.floor(y * sy)), min(H, int(np.ceil((y + c.shape[0]) * sy)))
                xa, xb = int(np.floor(x * sx)), min(W, int(np.ceil((x + c.shape[1]) * sx)))
                size = (max(xb - xa, 1), max(yb - ya, 1))
                big = cv2.resize(c.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
                found = mask_crop(big > 0.5)
                crops.append(None if found is None else (found[0], found[1] + ya, found[2] + xa))
        return Prediction.from_crops(
            (H, W),
            self.class_names,
            boxes,
            self.scores,
            self.labels,
            self.probs_with_bg,
            crops,
            self.mask_probs,
        ).with_mask_paste(self.mask_paste)
