"""Predict with a trained Mask R-CNN: one frame in, one :class:`Prediction` at the original size out.

:class:`Predictor` builds the model from a config, loads a checkpoint and prepares inputs
exactly as the test-time :class:`~pcna_seg.data.mapper.DatasetMapper` does (same channel
recipe, percentile normalisation, lowered-Otsu mask and MIN_SIZE_TEST/MAX_SIZE_TEST resize).

Two ways in:

- ``predict_record(record)``: a dataset record (DESIGN.md format); the mapper reads its files;
- ``predict_arrays({"pcna": (H, W), "dic": (H, W), ...})``: channels already in memory. Keys
  are recipe names (``"gray"``, ``"pcna"``, ``"dic"``, ...). Nothing is written to disk: the
  arrays go through the mapper's own channel code (:class:`~pcna_seg.data.channels.ChannelLoader`
  with an in-memory source) and its test-time resize, so both ways give the same result.

Predictions are rescaled to the original size with the evaluator's helper
(:func:`pcna_seg.evaluation.coco_eval.instances_to_coco`: bilinear paste, threshold 0.5).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from pcna_seg.data import transforms as T
from pcna_seg.data.channels import GRAY, OTSU, ChannelLoader, resolve_otsu_source
from pcna_seg.data.image_io import check_pixels, to_gray
from pcna_seg.errors import ConfigError, DataError, PcnaSegError, WeightsError

logger = logging.getLogger(__name__)


def _crop(mask: np.ndarray) -> tuple[np.ndarray, int, int] | None:
    """(H, W) mask → (bool crop of its bounding box, y0, x0), or None when empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask[ys[0] : ys[-1] + 1].any(axis=0))
    crop = np.asarray(mask[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1], dtype=bool)
    return crop.copy(), int(ys[0]), int(xs[0])


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
      thousands of nuclei stays small; :attr:`masks` gives the dense (N, H, W) bool array.

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

    def __post_init__(self) -> None:
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.class_names = list(self.class_names)
        if self.probs_with_bg is None:
            self.probs_with_bg = np.zeros((len(self.scores), len(self.class_names) + 1), np.float32)

    def __len__(self) -> int:
        return len(self.scores)

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
        crops = [_crop(m) for m in masks]
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
        )

    @staticmethod
    def concat(
        preds: Sequence[Prediction], image_size: tuple[int, int], class_names: Sequence[str]
    ) -> Prediction:
        """All instances of ``preds`` (already in the frame of ``image_size``), sorted by score."""
        k1 = len(class_names) + 1
        out = Prediction(
            image_size,
            list(class_names),
            np.concatenate([p.boxes for p in preds] or [np.zeros((0, 4), np.float32)]),
            np.concatenate([p.scores for p in preds] or [np.zeros(0, np.float32)]),
            np.concatenate([p.labels for p in preds] or [np.zeros(0, np.int64)]),
            np.concatenate([np.asarray(p.probs_with_bg) for p in preds] or [np.zeros((0, k1), np.float32)]),
            [c for p in preds for c in p.mask_crops],
            np.concatenate([p.mask_offsets for p in preds] or [np.zeros((0, 2), np.int64)]),
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


def prediction_from_output(
    output: dict[str, torch.Tensor],
    orig_hw: tuple[int, int],
    input_hw: tuple[int, int],
    class_names: Sequence[str],
) -> Prediction:
    """One image's model output (input frame) → :class:`Prediction` at ``orig_hw``.

    Rescaling, mask pasting and the 0.5 threshold are the evaluator's
    (:func:`~pcna_seg.evaluation.coco_eval.instances_to_coco`).
    """
    from pcna_seg.evaluation.coco_eval import instances_to_coco

    if "masks" not in output:
        raise ConfigError("The model returns no masks; prediction needs MODEL.MASK_ON True")
    k = len(class_names)
    results = instances_to_coco(output, 0, orig_hw, input_hw, list(range(k)))
    n = len(results)
    boxes = np.zeros((n, 4), np.float32)
    crops = []
    for i, r in enumerate(results):  # one mask decoded at a time: big fields stay small
        crops.append(_crop(mask_utils.decode(r["segmentation"])))
        x, y, bw, bh = r["bbox"]
        boxes[i] = (x, y, x + bw, y + bh)
    labels = np.asarray([r["category_id"] for r in results], np.int64)
    scores = output["scores"].detach().float().cpu().numpy()[:n]
    probs = output.get("class_probs")
    probs = probs.detach().float().cpu().numpy()[:n] if probs is not None else None
    return Prediction.from_crops(orig_hw, class_names, boxes, scores, labels, probs, crops)


class _ArrayLoader(ChannelLoader):
    """:class:`ChannelLoader` whose channels come from arrays instead of files."""

    def __init__(self, arrays: dict[str, np.ndarray], norm: Any, source: str) -> None:
        record = {"file_name": source, "channels": {k: k for k in arrays if k != GRAY}}
        super().__init__(record, norm)
        self.arrays = arrays
        self.source = source

    def raw(self, name: str) -> np.ndarray:
        if name not in self._raw:
            if name not in self.arrays:
                raise DataError(
                    f"Input {self.source} has no channel {name!r} (INPUT.CHANNELS); "
                    f"it has: {', '.join(sorted(self.arrays)) or 'none'}"
                )
            arr = np.asarray(self.arrays[name])
            check_pixels(arr, f"{self.source} ({name})")
            arr = to_gray(arr) if arr.ndim == 3 else arr
            if arr.ndim != 2:
                raise DataError(f"Channel {name!r} of {self.source} is not 2-D: {arr.shape}")
            self._raw[name] = arr
        return self._raw[name]


def default_config_path(weights: str | os.PathLike) -> Path:
    """``config.yaml`` beside the weights file (written by the trainer)."""
    return Path(weights).with_name("config.yaml")


def load_predict_config(
    weights: str | os.PathLike, config_file: str | os.PathLike | None = None, opts: Sequence[str] = ()
) -> Any:
    """The config for ``weights``: ``config_file``, else ``config.yaml`` beside the weights, else
    the config text stored in the checkpoint; then ``KEY VALUE`` ``opts``. Frozen CfgNode."""
    from pcna_seg.config.config import load_config
    from pcna_seg.engine.checkpoint import read_checkpoint

    weights = Path(weights)
    if not weights.is_file():
        raise WeightsError(f"Weights file not found: {weights}")
    if config_file is None and default_config_path(weights).is_file():
        config_file = default_config_path(weights)
    if config_file is not None:
        return load_config(config_file, list(opts))
    text = read_checkpoint(weights).get("config")
    if not isinstance(text, str):
        raise ConfigError(f"No config.yaml beside {weights} and none stored in it; pass --config-file")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text, encoding="utf-8")
        return load_config(path, list(opts))


def resolve_class_names(cfg: Any, weights: str | os.PathLike | None = None) -> list[str]:
    """Class names: the checkpoint's ``class_names``, else the first DATASETS.TRAIN dataset's
    ``thing_classes``, else ``class1..classK``; their number must be MODEL.ROI_HEADS.NUM_CLASSES."""
    from pcna_seg.engine.checkpoint import read_checkpoint

    k = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    names: list[str] | None = None
    if weights is not None:
        stored = read_checkpoint(weights).get("class_names")
        names = [str(n) for n in stored] if stored else None
    if not names and len(cfg.DATASETS.TRAIN):
        try:
            from pcna_seg.data.catalog import get_metadata

            names = list(
                get_metadata(cfg.DATASETS.TRAIN[0], cfg.DATASETS.ROOT or None).get("thing_classes") or []
            )
        except PcnaSegError:
            names = None
    if not names:
        names = [f"class{i + 1}" for i in range(k)]
    if len(names) != k:
        raise WeightsError(
            f"Weights file {weights} names {len(names)} classes ({', '.join(names)}) but "
            f"MODEL.ROI_HEADS.NUM_CLASSES is {k}"
        )
    return names


class Predictor:
    """A trained Mask R-CNN ready to predict single frames (eval mode, ``MODEL.DEVICE``).

    ``weights``: a checkpoint from ``tools/train_net.py`` (or a plain state dict). Every
    parameter must fit the config: a head the config would re-initialise (another NUM_CLASSES,
    another channel count) is a :class:`WeightsError`, never silently random.
    """

    def __init__(
        self, cfg: Any, weights: str | os.PathLike, class_names: Sequence[str] | None = None
    ) -> None:
        from pcna_seg.data.mapper import DatasetMapper
        from pcna_seg.engine.checkpoint import load_model_weights
        from pcna_seg.modeling import build_model

        self.cfg = cfg
        self.mapper = DatasetMapper.from_config(cfg, is_train=False)
        self.class_names = list(class_names) if class_names else resolve_class_names(cfg, weights)
        self.model = build_model(cfg)
        report = load_model_weights(self.model, weights)
        bad = [*report.reinitialised, *report.adapted, *report.missing]
        if bad:
            raise WeightsError(
                f"Weights file {weights} does not fit the config ({len(bad)} parameters differ or are "
                f"missing, e.g. {bad[0]}); use the config the model was trained with"
            )
        self.model.eval()
        self.device = next(self.model.parameters()).device

    @classmethod
    def from_checkpoint(
        cls,
        weights: str | os.PathLike,
        config_file: str | os.PathLike | None = None,
        opts: Sequence[str] = (),
    ) -> Predictor:
        """Config from ``config_file`` or beside/inside the weights (see :func:`load_predict_config`)."""
        return cls(load_predict_config(weights, config_file, opts), weights)

    @property
    def recipe(self) -> list[str]:
        """INPUT.CHANNELS: the model's input channel names, in order."""
        return list(self.mapper.channels)

    def required_channels(self, names: Sequence[str]) -> list[str]:
        """Raw channels an input offering ``names`` must provide for the recipe (Otsu source included)."""
        chans = {n: n for n in names if n != GRAY}
        need = []
        for name in self.recipe:
            if name == OTSU:
                name = resolve_otsu_source({"channels": chans}, self.mapper.norm.otsu_source)
            if name not in need:
                need.append(name)
        return need

    # -------------------------------------------------------------------------------- inputs
    def normalize(self, channels: dict[str, np.ndarray], source: str = "<arrays>") -> dict[str, np.ndarray]:
        """Raw channels {name: (H, W)} → recipe planes {recipe name: (H, W) float32 in [0, 1]}.

        Percentile normalisation and the Otsu mask use the whole image given here.
        """
        loader = _ArrayLoader(dict(channels), self.mapper.norm, source)
        planes = {name: loader.channel(name) for name in dict.fromkeys(self.recipe)}
        shapes = {p.shape for p in planes.values()}
        if len(shapes) > 1:
            raise DataError(f"Channels of {source} differ in size: {sorted(shapes)}")
        return planes

    def predict_planes(self, planes: dict[str, np.ndarray]) -> Prediction:
        """Recipe planes (from :meth:`normalize`, or a crop of them) → Prediction at their size."""
        image = np.stack([planes[name] for name in self.recipe], axis=-1).astype(np.float32, copy=False)
        h0, w0 = image.shape[:2]
        sizes = [self.mapper.min_size_test] if self.mapper.min_size_test > 0 else []
        new_h, new_w = T.sample_resize_shape(h0, w0, sizes, "choice", self.mapper.max_size_test, None)
        image = T.resize_image(image, (new_h, new_w), self.mapper.binary_channels)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return self._run(tensor, (h0, w0))

    def predict_arrays(self, channels: dict[str, np.ndarray], source: str = "<arrays>") -> Prediction:
        """Raw channels {name: (H, W) any real dtype} → Prediction at (H, W)."""
        return self.predict_planes(self.normalize(channels, source))

    __call__ = predict_arrays

    def predict_record(self, record: dict[str, Any]) -> Prediction:
        """A dataset record (files on disk) → Prediction at the record's original size."""
        data = self.mapper({**record, "annotations": []})
        return self._run(data["image"], (int(data["height"]), int(data["width"])))

    @torch.no_grad()
    def _run(self, image: torch.Tensor, orig_hw: tuple[int, int]) -> Prediction:
        output = self.model([image.to(self.device)])[0]
        output = {k: v.detach().cpu() for k, v in output.items()}
        return prediction_from_output(output, orig_hw, tuple(image.shape[-2:]), self.class_names)
