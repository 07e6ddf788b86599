"""DatasetMapper: one record (DESIGN.md format) → the tensors the Mask R-CNN model takes.

Steps: build the (H, W, C) input from the channel recipe with percentile normalisation on the
full image (:mod:`pcna_seg.data.channels`) → (train) shortest-edge resize, crop, flips, 90°
rotations, intensity jitter on fluorescence channels (:mod:`pcna_seg.data.transforms`) /
(test) resize to MIN_SIZE_TEST only → decode instance masks at the output size, boxes derived
from the masks, instances emptied by the crop dropped.

Randomness: the mapper owns a ``numpy.random.Generator``. Inside a DataLoader worker it is
re-seeded once from ``torch.utils.data.get_worker_info().seed`` so workers never repeat each
other's augmentations.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pcna_seg.data import transforms as T
from pcna_seg.data.channels import NON_FLUORESCENCE, OTSU, Normalization, build_input
from pcna_seg.data.structures import segmentation_to_mask
from pcna_seg.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


class DatasetMapper:
    """Callable record → ``{"image", "instances", "image_id", "file_name", "height", "width"}``.

    Output: ``image`` float32 (C, H, W) in recipe order with values in [0, 1];
    ``instances`` = ``{"boxes": float32 (N, 4) XYXY absolute pixels of the output image,
    "labels": int64 (N,) 1-based (category_id + 1), "masks": uint8 (N, H, W)}``; ``height``
    and ``width`` are the ORIGINAL image size (for rescaling predictions in evaluation).
    Crowd annotations (``iscrowd=1``) are skipped. Blank images give N = 0.
    """

    def __init__(
        self,
        *,
        is_train: bool,
        channels: Sequence[str] = ("gray", "gray", "gray"),
        norm: Normalization | None = None,
        min_size_train: Sequence[int] = (0,),
        min_size_sampling: str = "choice",
        max_size_train: int = 0,
        min_size_test: int = 0,
        max_size_test: int = 0,
        crop_enabled: bool = False,
        crop_type: str = "relative_range",
        crop_size: Sequence[float] = (0.9, 0.9),
        flip: str = "none",
        rotate90: bool = False,
        intensity_enabled: bool = False,
        intensity_brightness: float = 0.1,
        intensity_contrast: float = 0.1,
        intensity_channels: Sequence[str] = ("pcna", "gray"),
        num_classes: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.is_train = bool(is_train)
        self.channels = [str(c) for c in channels]
        if not self.channels:
            raise ConfigError("INPUT.CHANNELS is empty; name at least one channel")
        self.norm = (norm or Normalization()).check()
        self.min_size_train = [int(s) for s in min_size_train]
        self.min_size_sampling = min_size_sampling
        self.max_size_train = int(max_size_train)
        self.min_size_test, self.max_size_test = int(min_size_test), int(max_size_test)
        self.crop_enabled, self.crop_type = bool(crop_enabled), crop_type
        self.crop_size = [float(s) for s in crop_size]
        if self.crop_enabled and crop_type not in T.CROP_TYPES:
            raise ConfigError(f"INPUT.CROP.TYPE must be one of {', '.join(T.CROP_TYPES)}, got {crop_type!r}")
        if flip not in T.FLIP_MODES:
            raise ConfigError(f"INPUT.RANDOM_FLIP must be one of {', '.join(T.FLIP_MODES)}, got {flip!r}")
        self.flip, self.rotate90 = flip, bool(rotate90)
        bad = [c for c in intensity_channels if c in NON_FLUORESCENCE]
        if bad:
            raise ConfigError(f"INPUT.INTENSITY.CHANNELS must name fluorescence channels only, not {bad}")
        self.intensity_enabled = bool(intensity_enabled)
        self.intensity_brightness, self.intensity_contrast = (
            float(intensity_brightness),
            float(intensity_contrast),
        )
        self.intensity_channels = [str(c) for c in intensity_channels]
        self.num_classes = num_classes
        self.binary_channels = [i for i, c in enumerate(self.channels) if c == OTSU]
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._worker_seed: int | None = None

    @classmethod
    def from_config(cls, cfg: Any, is_train: bool, seed: int | None = None) -> DatasetMapper:
        """Build from a config's ``INPUT.*`` keys (and MODEL.ROI_HEADS.NUM_CLASSES)."""
        inp = cfg.INPUT
        if seed is None and int(getattr(cfg, "SEED", -1)) >= 0:
            seed = int(cfg.SEED)
        return cls(
            is_train=is_train,
            channels=list(inp.CHANNELS),
            norm=Normalization.from_config(cfg),
            min_size_train=list(inp.MIN_SIZE_TRAIN),
            min_size_sampling=inp.MIN_SIZE_TRAIN_SAMPLING,
            max_size_train=inp.MAX_SIZE_TRAIN,
            min_size_test=inp.MIN_SIZE_TEST,
            max_size_test=inp.MAX_SIZE_TEST,
            crop_enabled=inp.CROP.ENABLED,
            crop_type=inp.CROP.TYPE,
            crop_size=list(inp.CROP.SIZE),
            flip=inp.RANDOM_FLIP,
            rotate90=inp.ROTATE90,
            intensity_enabled=inp.INTENSITY.ENABLED,
            intensity_brightness=inp.INTENSITY.BRIGHTNESS,
            intensity_contrast=inp.INTENSITY.CONTRAST,
            intensity_channels=list(inp.INTENSITY.CHANNELS),
            num_classes=int(cfg.MODEL.ROI_HEADS.NUM_CLASSES),
            seed=seed,
        )

    # -----------------------------------------------------------------------------------------
    def _generator(self) -> np.random.Generator:
        """The mapper's generator, re-seeded once per DataLoader worker (distinct streams)."""
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker_seed != info.seed:
            self._worker_seed = info.seed
            entropy = [int(info.seed) % (2**63), 0 if self.seed is None else int(self.seed)]
            self.rng = np.random.default_rng(np.random.SeedSequence(entropy))
        return self.rng

    def _labels(self, anns: list[dict[str, Any]], file_name: str) -> list[int]:
        labels = []
        for ann in anns:
            cid = int(ann["category_id"])
            if cid < 0 or (self.num_classes is not None and cid >= self.num_classes):
                raise DataError(
                    f"Annotation in {file_name} has category_id {cid}, outside the "
                    f"MODEL.ROI_HEADS.NUM_CLASSES={self.num_classes} classes"
                )
            labels.append(cid + 1)
        return labels

    def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
        """Map one record; see the class docstring for the output layout."""
        file_name = str(record.get("file_name", ""))
        image = build_input(record, self.channels, self.norm)
        h0, w0 = image.shape[:2]
        rng = self._generator() if self.is_train else None

        # plan resize + crop
        if self.is_train:
            new_h, new_w = T.sample_resize_shape(
                h0, w0, self.min_size_train, self.min_size_sampling, self.max_size_train, rng
            )
        else:
            sizes = [self.min_size_test] if self.min_size_test > 0 else []
            new_h, new_w = T.sample_resize_shape(h0, w0, sizes, "choice", self.max_size_test, None)
        image = T.resize_image(image, (new_h, new_w), self.binary_channels)
        y0, x0, ch, cw = 0, 0, new_h, new_w
        if self.is_train and self.crop_enabled:
            y0, x0, ch, cw = T.sample_crop(new_h, new_w, self.crop_type, self.crop_size, rng, file_name)
            image = image[y0 : y0 + ch, x0 : x0 + cw]

        # instance masks at the output size
        anns = [a for a in record.get("annotations", []) or [] if not a.get("iscrowd", 0)]
        labels = self._labels(anns, file_name)
        rows = T.nearest_indices(h0, new_h)[y0 : y0 + ch]
        cols = T.nearest_indices(w0, new_w)[x0 : x0 + cw]
        masks = np.zeros((len(anns), ch, cw), dtype=np.uint8)
        for i, ann in enumerate(anns):
            T.resample_mask_into(masks[i], segmentation_to_mask(ann["segmentation"], h0, w0), rows, cols)

        if self.is_train:
            hflip, vflip, k = T.sample_flip_rot(rng, self.flip, self.rotate90)
            image, masks = T.apply_flip_rot(image, masks, hflip, vflip, k)
            if self.intensity_enabled:
                image = T.jitter_intensity(
                    image,
                    self.channels,
                    self.intensity_channels,
                    self.intensity_brightness,
                    self.intensity_contrast,
                    rng,
                )

        keep = masks.reshape(len(anns), -1).any(axis=1) if len(anns) else np.zeros(0, dtype=bool)
        masks = masks[keep]
        label_arr = np.asarray(labels, dtype=np.int64)[keep] if len(anns) else np.zeros(0, dtype=np.int64)
        boxes = T.boxes_from_masks(masks)
        out_h, out_w = image.shape[:2]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
            "instances": {
                "boxes": torch.from_numpy(boxes).reshape(-1, 4),
                "labels": torch.from_numpy(label_arr),
                "masks": torch.from_numpy(np.ascontiguousarray(masks)).reshape(-1, out_h, out_w),
            },
            "image_id": record.get("image_id"),
            "file_name": file_name,
            "height": int(record.get("height", h0)),
            "width": int(record.get("width", w0)),
        }
