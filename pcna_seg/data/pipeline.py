"""The one input pipeline: a record or in-memory channels → the model's input at model scale.

Training (through :class:`~pcna_seg.data.mapper.DatasetMapper`, which adds augmentation),
evaluation and prediction all use :class:`InputPipeline`, so a nucleus is prepared the same
way everywhere:

1. channels by the recipe ``INPUT.CHANNELS`` (:mod:`pcna_seg.data.channels`): percentile
   normalisation and the lowered-Otsu mask on the WHOLE image, at native pixels;
2. the pixel scale (:mod:`pcna_seg.data.scale`): one factor per image from ``INPUT.SCALE``
   (fixed factor, target nucleus diameter, or detectron2's short edge);
3. resize (bilinear for intensities, nearest for the binary Otsu channel) → (C, h, w) float32.

Outputs are mapped back to the original pixels by :func:`pcna_seg.modeling.postprocess`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pcna_seg.data import transforms as T
from pcna_seg.data.channels import OTSU, ChannelLoader, Normalization, build_input, otsu_mask
from pcna_seg.data.scale import ScalePolicy, estimate_diameter, size_mismatch
from pcna_seg.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class ModelInput:
    """One prepared image: ``image`` float32 (C, h, w) at model scale, ``orig_hw`` its native size."""

    image: torch.Tensor
    orig_hw: tuple[int, int]
    diameter: float = 0.0  # the nucleus diameter (native px) the scale used or estimated; 0 = none

    @property
    def model_hw(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    @property
    def factor(self) -> float:
        """Model pixels per native pixel (the mean of both axes)."""
        return 0.5 * (self.model_hw[0] / self.orig_hw[0] + self.model_hw[1] / self.orig_hw[1])


class InputPipeline:
    """Channel recipe + normalisation + scale policy (see the module docstring)."""

    def __init__(self, channels: Sequence[str], norm: Normalization, scale: ScalePolicy) -> None:
        self.channels = [str(c) for c in channels]
        if not self.channels:
            raise ConfigError("INPUT.CHANNELS is empty; name at least one channel")
        self.norm = norm.check()
        self.scale = scale.check()
        self.binary_channels = [i for i, c in enumerate(self.channels) if c == OTSU]

    @classmethod
    def from_config(cls, cfg: Any, train_diameter: float = 0.0) -> InputPipeline:
        return cls(
            list(cfg.INPUT.CHANNELS),
            Normalization.from_config(cfg),
            ScalePolicy.from_config(cfg, train_diameter=train_diameter),
        )

    # ------------------------------------------------------------------------------------
    def record_loader(self, record: dict[str, Any]) -> ChannelLoader:
        """A ChannelLoader reading a record's files."""
        return ChannelLoader(record, self.norm)

    def array_loader(self, arrays: dict[str, np.ndarray], name: str = "<arrays>") -> ChannelLoader:
        """A ChannelLoader over in-memory channels ``{recipe name: (H, W)}``; ``name`` for messages."""
        return ChannelLoader.from_arrays(arrays, self.norm, name)

    def native(self, loader: ChannelLoader) -> np.ndarray:
        """(H, W, C) float32 normalised recipe planes at native pixels."""
        return build_input(loader, self.channels)

    def estimate_diameter(self, loader: ChannelLoader) -> float:
        """Median nucleus diameter (native px) estimated from the lowered-Otsu foreground."""
        rescaled = loader.normalized(loader.otsu_source, 1.0)
        return estimate_diameter(otsu_mask(rescaled, self.norm.otsu_sigma, self.norm.otsu_offset))

    def test_diameter(self, loader: ChannelLoader, diameter: float = 0.0) -> float:
        """The nucleus diameter a test image is scaled by (object_size): given, configured or estimated."""
        d = diameter or self.scale.test_diameter
        if d <= 0 and self.scale.mode == "object_size":
            d = self.estimate_diameter(loader)
        return d

    def to_model(self, planes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Resize (H, W, C) planes to ``shape`` (bilinear; nearest for the Otsu channel)."""
        if tuple(planes.shape[:2]) == tuple(shape):
            return planes
        return T.resize_image(planes, shape, self.binary_channels)

    def prepare(self, loader: ChannelLoader, diameter: float = 0.0) -> ModelInput:
        """Test-time input from a record or array loader; ``diameter`` (native px) for object_size."""
        return self.prepare_planes(self.native(loader), diameter=self.test_diameter(loader, diameter))

    def prepare_planes(self, planes: np.ndarray, diameter: float = 0.0, where: str = "input") -> ModelInput:
        """Test-time input from normalised (H, W, C) planes (e.g. a whole field before tiling)."""
        h, w = planes.shape[:2]
        shape = self.scale.test_factor(h, w, diameter)
        self.scale.check_pixels(shape[0], shape[1], where)
        image = self.to_model(planes, shape)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        return ModelInput(tensor, (int(h), int(w)), float(diameter))

    def warn_size(self, loader: ChannelLoader, where: str) -> float:
        """Estimate the nuclei's diameter and warn when the model saw them at another size.

        Returns the estimate (native px; 0 when none). The model's training size is
        ``scale.model_diameter()`` (model px), known from the checkpoint.
        """
        expected = self.scale.model_diameter()
        if expected <= 0 or self.scale.mode != "fixed":
            return 0.0
        est = self.estimate_diameter(loader)
        seen = est * self.scale.factor
        if size_mismatch(seen, expected):
            logger.warning(
                "%s: nuclei look about %.0f px across, the model was trained on about %.0f px "
                "(at INPUT.SCALE.FACTOR %g); pass INPUT.SCALE.FACTOR %.2f to match, or train with "
                "INPUT.SCALE.MODE object_size",
                where,
                est,
                expected,
                self.scale.factor,
                expected / est,
            )
        return est
