"""DatasetMapper: one record (DESIGN.md format) → the tensors the Mask R-CNN model takes.

Steps: the channels and pixel scale of the one input pipeline
(:class:`~pcna_seg.data.pipeline.InputPipeline`: recipe, percentile normalisation on the full
image, ``INPUT.SCALE``) → (train) scale with optional jitter, crop at model scale, flips, 90°
rotations, intensity jitter and photometric augmentation (gamma, gain, offset, blur, noise:
``INPUT.AUGMENT``) on fluorescence channels (:mod:`pcna_seg.data.transforms`) /
(test) the test-time scale only → instance masks at the output size, boxes derived from the
masks, instances emptied by the crop dropped.

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
from pcna_seg.data.boxes import boxes_from_masks
from pcna_seg.data.channels import NON_FLUORESCENCE, Normalization
from pcna_seg.data.pipeline import InputPipeline
from pcna_seg.data.scale import ScalePolicy, record_areas
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

    ``augment``: photometric augmentation of fluorescence channels (training only; None = off).
    ``scale`` is the pixel-scale policy; without one, the legacy ``min_size_*`` / ``max_size_*``
    arguments make a short-edge policy (their defaults keep the native size).
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
        scale: ScalePolicy | None = None,
        augment: T.PhotometricAugment | None = None,
    ) -> None:
        self.is_train = bool(is_train)
        if scale is None:
            scale = ScalePolicy(
                mode="short_edge",
                min_size_train=tuple(int(s) for s in min_size_train),
                min_size_sampling=min_size_sampling,
                max_size_train=int(max_size_train),
                min_size_test=int(min_size_test),
                max_size_test=int(max_size_test),
            )
        self.pipeline = InputPipeline(channels, norm or Normalization(), scale)
        self.channels, self.norm, self.scale = self.pipeline.channels, self.pipeline.norm, self.pipeline.scale
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
        self.augment = augment or T.PhotometricAugment()
        self.num_classes = num_classes
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._worker_seed: int | None = None

    @classmethod
    def from_config(
        cls, cfg: Any, is_train: bool, seed: int | None = None, train_diameter: float = 0.0
    ) -> DatasetMapper:
        """Build from a config's ``INPUT.*`` keys (and MODEL.ROI_HEADS.NUM_CLASSES).

        ``train_diameter``: the training set's median nucleus diameter (native px), the
        object_size fallback for images without instances.
        """
        inp = cfg.INPUT
        if seed is None and int(getattr(cfg, "SEED", -1)) >= 0:
            seed = int(cfg.SEED)
        return cls(
            is_train=is_train,
            channels=list(inp.CHANNELS),
            norm=Normalization.from_config(cfg),
            scale=ScalePolicy.from_config(cfg, train_diameter=train_diameter),
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
            augment=T.PhotometricAugment.from_config(getattr(inp, "AUGMENT", None)),
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
        loader = self.pipeline.record_loader(record)
        image = self.pipeline.native(loader)
        h0, w0 = image.shape[:2]
        rng = self._generator() if self.is_train else None

        # plan scale + crop
        if self.is_train:
            areas = record_areas(record) if self.scale.mode == "object_size" else np.zeros(0)
            new_h, new_w = self.scale.train_factor(h0, w0, areas, rng)
        else:
            new_h, new_w = self.scale.test_factor(h0, w0, self.pipeline.test_diameter(loader))
        self.scale.check_pixels(new_h, new_w, file_name)  # the same budget as prediction
        image = self.pipeline.to_model(image, (new_h, new_w))
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
            if self.augment.enabled:
                image = T.photometric_augment(image, self.channels, self.augment, rng)

        keep = masks.reshape(len(anns), -1).any(axis=1) if len(anns) else np.zeros(0, dtype=bool)
        masks = masks[keep]
        label_arr = np.asarray(labels, dtype=np.int64)[keep] if len(anns) else np.zeros(0, dtype=np.int64)
        boxes = boxes_from_masks(masks)
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
