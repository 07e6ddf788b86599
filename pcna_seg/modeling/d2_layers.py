"""detectron2-compatible layers for the torchvision Mask R-CNN (no detectron2 import).

- :class:`ExactAnchorGenerator` — ``MODEL.ANCHOR_GENERATOR.NAME: DefaultAnchorGenerator``:
  detectron2's cell anchors (``w = sqrt(size² / ratio)``, ``h = ratio · w``, centred on
  ``offset · stride``, size-major order per location, not rounded), on a grid with each
  level's nominal stride (4, 8, ..., 64 with P2..P6). torchvision's generator
  rounds every anchor to whole pixels and orders them ratio-major; detectron2 weights expect
  the former, torchvision weights the latter.
- :class:`PoolerRoIAlign` — a ``MultiScaleRoIAlign`` with the ``aligned`` flag of
  ``POOLER_TYPE`` (``ROIAlign`` = legacy, unaligned; ``ROIAlignV2`` = aligned, half-pixel
  shift, what detectron2 models are trained with) and any ``POOLER_SAMPLING_RATIO``
  (0 = adaptive).
- :func:`move_stride_to_1x1` — ``MODEL.RESNETS.STRIDE_IN_1X1``: put the stride of every
  down-sampling bottleneck in its first 1×1 conv (MSRA/Caffe2 ResNets, detectron2's model
  zoo) instead of the 3×3 conv (torchvision, "ResNet v1.5").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.resnet import Bottleneck
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

#: POOLER_TYPE → RoIAlign ``aligned`` flag
POOLER_TYPES = {"ROIAlign": False, "ROIAlignV2": True}


class ExactAnchorGenerator(AnchorGenerator):
    """detectron2's anchors: unrounded, ``len(sizes) * len(ratios)`` per location, size-major.

    ``offset`` in [0, 1) shifts every anchor centre by ``offset * stride`` (detectron2's
    ``MODEL.ANCHOR_GENERATOR.OFFSET``; 0 = centred on the top-left pixel of each cell).
    """

    def __init__(self, sizes, aspect_ratios, offset: float = 0.0) -> None:
        self.offset = float(offset)
        super().__init__(sizes, aspect_ratios)

    def generate_anchors(  # noqa: D102
        self,
        scales: list[int],
        aspect_ratios: list[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),
    ) -> Tensor:
        cells = []
        for size in scales:  # computed in float64 as detectron2 does, then cast
            area = float(size) ** 2
            for ratio in aspect_ratios:
                w = math.sqrt(area / float(ratio))
                h = float(ratio) * w
                cells.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return torch.tensor(cells, dtype=dtype, device=device)

    def grid_anchors(self, grid_sizes: list[list[int]], strides: list[list[Tensor]]) -> list[Tensor]:
        """As torchvision's, with detectron2's strides and the centre offset.

        torchvision infers each level's stride as ``image_size // grid_size``, which is wrong on
        a level whose map was rounded up (the pool level of a 224-px-high input: 224 // 4 = 56,
        not 64); detectron2 uses the nominal stride. Here level k's stride is level 0's (exact:
        inputs are padded to a multiple of 32) times 2**k.
        """
        strides = [[s * 2**k for s in strides[0]] for k in range(len(strides))]
        anchors = super().grid_anchors(grid_sizes, strides)
        if self.offset == 0.0:
            return anchors
        out = []
        for a, (sh, sw) in zip(anchors, strides):
            shift = torch.stack([sw, sh, sw, sh]).to(a) * self.offset
            out.append(a + shift)
        return out


class PoolerRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` with RoIAlign's ``aligned`` flag exposed.

    Input: feature dict, per-image (N_i, 4) XYXY boxes in the input frame, image shapes;
    output (sum N_i, C, R, R) float, boxes assigned to levels as torchvision (and detectron2)
    do: ``floor(4 + log2(sqrt(area) / 224))`` clamped to the pooled levels.
    """

    def __init__(
        self, featmap_names: list[str], output_size: int, sampling_ratio: int, aligned: bool
    ) -> None:
        super().__init__(featmap_names=featmap_names, output_size=output_size, sampling_ratio=sampling_ratio)
        self.aligned = bool(aligned)

    def forward(  # noqa: D102
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        feats = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                feats, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)
        kw = {"output_size": self.output_size, "sampling_ratio": self.sampling_ratio, "aligned": self.aligned}
        if len(feats) == 1:
            return roi_align(feats[0], rois, spatial_scale=self.scales[0], **kw)
        levels = self.map_levels(boxes)
        result = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], *self.output_size))
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == level)[0]
            result[idx] = roi_align(feat, rois[idx], spatial_scale=scale, **kw).to(result.dtype)
        return result

    def extra_repr(self) -> str:  # noqa: D102
        return f"{super().extra_repr()}, aligned={self.aligned}"


def move_stride_to_1x1(body: nn.Module) -> int:
    """Move the stride of each strided torchvision ``Bottleneck`` from conv2 (3×3) to conv1 (1×1).

    Returns the number of blocks changed (0 for BasicBlock ResNets, which have no 1×1 conv).
    Parameter shapes are unchanged; only where the spatial down-sampling happens moves.
    """
    changed = 0
    for block in body.modules():
        if isinstance(block, Bottleneck) and block.conv2.stride != (1, 1):
            block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
            changed += 1
    return changed
