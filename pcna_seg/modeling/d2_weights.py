"""detectron2 checkpoints → this project's torchvision Mask R-CNN, without importing detectron2.

Reads

- a detectron2 model-zoo ``.pkl``: a pickle of ``{"model": {name: numpy array}, "__author__":
  ..., "matching_heuristics": ...}`` (or a bare ``{name: array}``), unpickled with a
  restricted unpickler that only admits numpy arrays, dtypes and plain containers;
- a detectron2 ``.pth`` (``{"model": state_dict, "optimizer": ..., "iteration": ...}``), read
  by :func:`pcna_seg.modeling.weights.read_state_dict`;

and renames / rearranges detectron2's parameters into torchvision's (:func:`convert_d2_state`):

======================================  ==============================================
detectron2                              torchvision (this project)
======================================  ==============================================
backbone.bottom_up.stem.conv1(.norm)    backbone.body.conv1 / bn1 (FrozenBN buffers)
backbone.bottom_up.resN.b.convI(.norm)  backbone.body.layer{N-1}.b.convI / bnI
backbone.bottom_up.resN.b.shortcut      backbone.body.layer{N-1}.b.downsample.0 / .1
backbone.fpn_lateralN / fpn_outputN     backbone.fpn.inner_blocks.i.0 / layer_blocks.i.0
proposal_generator.rpn_head.conv        rpn.head.conv.0.0
  .objectness_logits / .anchor_deltas   rpn.head.cls_logits / bbox_pred (anchor order)
roi_heads.box_head.fc1 / fc2            roi_heads.box_head.fc6 / fc7
roi_heads.box_predictor.cls_score       same name, rows [background (last), 0..K-1]
roi_heads.box_predictor.bbox_pred       same name, 4 zero rows for background first
roi_heads.mask_head.mask_fcnI           roi_heads.mask_head.{I-1}.0
roi_heads.mask_head.deconv / predictor  roi_heads.mask_predictor.conv5_mask / mask_fcn_logits
                                        (predictor: a zero background row first)
======================================  ==============================================

Class-agnostic detectron2 heads (``CLS_AGNOSTIC_BBOX_REG`` / ``CLS_AGNOSTIC_MASK``: 4 box
rows / 1 mask row) are repeated for every class, which is what they compute. Anchors: with
``MODEL.ANCHOR_GENERATOR.NAME: DefaultAnchorGenerator`` the model's anchor order is
detectron2's and the RPN rows are copied as they are; with torchvision's generator and
several sizes per level they are permuted from size-major to ratio-major.

What the weights do not carry and the config must give (see
``configs/Base-MaskRCNN-FPN-detectron2-weights.yaml``): ``MODEL.RESNETS.STRIDE_IN_1X1`` (True
for detectron2's MSRA-based model zoo), ``POOLER_TYPE: ROIAlignV2`` with
``POOLER_SAMPLING_RATIO: 0``, detectron2 anchors, and the pixel statistics: detectron2 feeds
0..255 BGR images minus ``PIXEL_MEAN`` divided by ``PIXEL_STD``; this project's inputs are
[0, 1], so the same normalisation is ``mean / 255`` and ``std / 255``. The file's own
``pixel_mean``/``pixel_std`` buffers, when present, are compared with the model's and a
mismatch is logged.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pcna_seg.errors import WeightsError
from pcna_seg.modeling.d2_layers import ExactAnchorGenerator

logger = logging.getLogger(__name__)

#: globals a model-zoo pickle may reference (numpy arrays and scalars, ordered dicts)
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
}
_D2_MARKERS = ("backbone.bottom_up.", "proposal_generator.", "roi_heads.box_head.fc1.")  # never torchvision
_CAFFE2 = re.compile(r"^(conv1_w|res\d+_\d+_branch|res_conv1_bn|fpn_inner|rpn_cls_logits|cls_score_w)")
_RES = re.compile(r"^backbone\.bottom_up\.res(\d)\.(\d+)\.(conv\d|shortcut)(\.norm)?\.(\w+)$")
_STEM = re.compile(r"^backbone\.bottom_up\.stem\.conv1(\.norm)?\.(\w+)$")
_FPN = re.compile(r"^backbone\.fpn_(lateral|output)(\d)\.(weight|bias)$")
_FIXED = {
    "proposal_generator.rpn_head.conv.": "rpn.head.conv.0.0.",
    "proposal_generator.rpn_head.objectness_logits.": "rpn.head.cls_logits.",
    "proposal_generator.rpn_head.anchor_deltas.": "rpn.head.bbox_pred.",
    "roi_heads.box_head.fc1.": "roi_heads.box_head.fc6.",
    "roi_heads.box_head.fc2.": "roi_heads.box_head.fc7.",
    "roi_heads.box_predictor.cls_score.": "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.": "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_head.deconv.": "roi_heads.mask_predictor.conv5_mask.",
    "roi_heads.mask_head.predictor.": "roi_heads.mask_predictor.mask_fcn_logits.",
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy array reconstruction (no code runs)."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a weights pickle")
        if module.startswith("numpy.core"):  # numpy >= 2 moved numpy.core to numpy._core
            module = "numpy._core" + module[len("numpy.core") :]
        return getattr(importlib.import_module(module), name)


def read_d2_pickle(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a detectron2 model-zoo ``.pkl`` into ``{name: tensor}`` (CPU, the file's dtypes).

    WeightsError for a missing/corrupt file or a pickle holding anything but arrays. MSRA
    ImageNet ResNets with Caffe2 names are renamed (:func:`caffe2_backbone_names`); a Caffe2
    detector (Detectron v1) is a WeightsError.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file not found: {path} (a detectron2 model-zoo .pkl was expected)")
    try:
        with open(path, "rb") as fh:
            obj = _NumpyOnlyUnpickler(fh, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"cannot read weights pickle {path}: {exc}") from None
    except Exception as exc:  # EOFError, ValueError, ... for damaged files
        raise WeightsError(f"cannot read weights pickle {path}: {type(exc).__name__}: {exc}") from None
    model = (obj.get("model") or obj.get("blobs") or obj) if isinstance(obj, dict) else None
    if not isinstance(model, dict):
        raise WeightsError(f"weights pickle {path} holds no {{name: array}} dict under 'model'")
    state = {}
    for key, val in model.items():
        if str(key).endswith("_momentum"):  # Caffe2 optimizer state
            continue
        if isinstance(val, np.ndarray):
            state[str(key)] = torch.from_numpy(np.ascontiguousarray(val))
        elif isinstance(val, torch.Tensor):
            state[str(key)] = val
    if not state:
        raise WeightsError(f"weights pickle {path} holds no arrays under 'model'")
    if any(_CAFFE2.match(k) for k in state) and not is_d2_state(state):
        state = caffe2_backbone_names(state, path)
    logger.info("Read %d arrays from detectron2 pickle %s (author: %s)", len(state), path, _author(obj))
    return state


_C2_RES = re.compile(r"^res(\d)_(\d+)_branch(1|2a|2b|2c)(_bn)?_(w|s|b)$")
_C2_PART = {"1": "shortcut", "2a": "conv1", "2b": "conv2", "2c": "conv3"}


def caffe2_backbone_names(state: dict[str, torch.Tensor], path: Any = "") -> dict[str, torch.Tensor]:
    """MSRA / Caffe2 ImageNet ResNet names (``conv1_w``, ``res_conv1_bn_s``,
    ``res2_0_branch2a_w``, ...) → bare detectron2 ResNet names (``stem.conv1.weight``, ...).

    Caffe2's batch norm is an affine channel (scale ``_s``, shift ``_b``): the running mean and
    variance are written as 0 and 1. The ``fc1000`` classifier is dropped. Any other Caffe2 name
    (a Detectron v1 detector: FPN, RPN, heads) is a WeightsError.
    """
    out: dict[str, torch.Tensor] = {}
    leaf = {"w": "weight", "s": "weight", "b": "bias"}
    for key, val in state.items():
        if key.startswith("fc1000_"):
            continue
        if key == "conv1_w":
            out["stem.conv1.weight"] = val
            continue
        if key in ("res_conv1_bn_s", "res_conv1_bn_b"):
            base, name = "stem.conv1.norm", leaf[key[-1]]
        else:
            m = _C2_RES.match(key)
            if not m:
                raise WeightsError(
                    f"weights pickle {path} holds Caffe2 (Detectron v1) name {key!r}: only MSRA ImageNet "
                    "ResNets are converted from Caffe2 names; use a detectron2 model-zoo model_final_*.pkl"
                )
            stage, block, branch, bn, kind = m.groups()
            conv = f"res{stage}.{block}.{_C2_PART[branch]}"
            if not bn:
                out[f"{conv}.weight"] = val
                continue
            base, name = f"{conv}.norm", leaf[kind]
        out[f"{base}.{name}"] = val
        if name == "weight":
            out[f"{base}.running_mean"] = torch.zeros_like(val)
            out[f"{base}.running_var"] = torch.ones_like(val)
    logger.info("Converted %d Caffe2 (MSRA ImageNet) ResNet arrays to detectron2 names", len(state))
    return out


def _author(obj: Any) -> str:
    return str(obj.get("__author__", "unknown")) if isinstance(obj, dict) else "unknown"


def is_d2_state(state: dict[str, Any]) -> bool:
    """True when ``state`` uses detectron2's parameter names: a GeneralizedRCNN, or a bare
    detectron2 ResNet (``stem.conv1.weight``, ``res2.0...``, as detectron2's ImageNet files)."""
    return any(k.startswith(_D2_MARKERS) for k in state) or "stem.conv1.weight" in state


def _with_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bare detectron2 ResNet names → ``backbone.bottom_up.`` names (others unchanged)."""
    if "stem.conv1.weight" not in state:
        return state
    bare = re.compile(r"^(stem|res\d)\.")
    return {("backbone.bottom_up." + k if bare.match(k) else k): v for k, v in state.items()}


def d2_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """detectron2 names as detectron2's model has them: ``module.`` stripped, a bare ResNet
    prefixed with ``backbone.bottom_up.``, pixel statistics and BN counters dropped."""
    out = {}
    for key, val in _with_prefix(state).items():
        while key.startswith("module."):
            key = key[len("module.") :]
        if key in ("pixel_mean", "pixel_std") or key.endswith("num_batches_tracked"):
            continue
        out[key] = val.detach().to(torch.float32) if val.is_floating_point() else val
    return out


def _fpn_index(model: nn.Module) -> dict[int, int]:
    """detectron2 FPN stage number (2..5) → torchvision inner/layer block index of ``model``."""
    layers = getattr(model.backbone.body, "return_layers", {})
    return {int(name[len("layer") :]) + 1: int(idx) for name, idx in layers.items()}


def _rename(key: str, fpn_index: dict[int, int]) -> str | None:
    """torchvision name of detectron2 parameter ``key`` (None: no counterpart)."""
    m = _STEM.match(key)
    if m:
        return f"backbone.body.{'bn1' if m.group(1) else 'conv1'}.{m.group(2)}"
    m = _RES.match(key)
    if m:
        stage, block, part, norm, leaf = m.groups()
        base = f"backbone.body.layer{int(stage) - 1}.{block}."
        if part == "shortcut":
            return base + ("downsample.1." if norm else "downsample.0.") + leaf
        return base + (f"bn{part[4:]}." if norm else f"{part}.") + leaf
    m = _FPN.match(key)
    if m:
        kind, stage, leaf = m.group(1), int(m.group(2)), m.group(3)
        if stage not in fpn_index:
            return None
        block = "inner_blocks" if kind == "lateral" else "layer_blocks"
        return f"backbone.fpn.{block}.{fpn_index[stage]}.0.{leaf}"
    m = re.match(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$", key)
    if m:
        return f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}"
    for src, dst in _FIXED.items():
        if key.startswith(src):
            return dst + key[len(src) :]
    return None


def _rpn_permutation(model: nn.Module) -> torch.Tensor | None:
    """Index so that ``tv_rows = d2_rows[perm]`` per location; None when the orders agree."""
    gen = model.rpn.anchor_generator
    if isinstance(gen, ExactAnchorGenerator):
        return None
    shapes = {(len(s), len(r)) for s, r in zip(gen.sizes, gen.aspect_ratios)}
    if len(shapes) != 1:
        raise WeightsError(
            "detectron2 RPN weights need the same number of anchor sizes and ratios on every level; "
            "set MODEL.ANCHOR_GENERATOR.NAME DefaultAnchorGenerator"
        )
    n_s, n_r = shapes.pop()
    if n_s == 1 or n_r == 1:
        return None
    # torchvision anchor p = r * n_s + s (ratio-major); detectron2 anchor j = s * n_r + r
    return torch.tensor([s * n_r + r for r in range(n_r) for s in range(n_s)])


def _class_rows(name: str, val: torch.Tensor, num_classes: int | None) -> torch.Tensor:
    """Background-first, K + 1 class rows (``num_classes`` = K of the file, from cls_score)."""
    if name.startswith("roi_heads.box_predictor.cls_score."):
        return torch.cat([val[-1:], val[:-1]])  # detectron2: background last
    if name.startswith("roi_heads.box_predictor.bbox_pred."):
        if val.shape[0] == 4 and (num_classes or 0) > 1:  # class-agnostic regression: same deltas per class
            return val.repeat(num_classes + 1, *([1] * (val.dim() - 1)))
        return torch.cat([torch.zeros_like(val[:4]), val])
    if name.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
        if val.shape[0] == 1 and (num_classes or 0) > 1:  # class-agnostic mask
            return val.repeat(num_classes + 1, *([1] * (val.dim() - 1)))
        return torch.cat([torch.zeros_like(val[:1]), val])
    return val


def convert_d2_state(
    state: dict[str, torch.Tensor], model: nn.Module
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """detectron2 ``{name: tensor}`` → ``(torchvision state for model, unmapped detectron2 names)``.

    ``model`` (a built :class:`pcna_seg.modeling.build.PcnaMaskRCNN`) supplies the FPN levels
    and the anchor order. Shapes are not checked here (``load_weights`` does: class-specific
    rows of another class count are re-initialised there).
    """
    _check_pixel_stats(state, model)
    state = d2_names(state)
    fpn_index = _fpn_index(model)
    perm = _rpn_permutation(model)
    cls = state.get("roi_heads.box_predictor.cls_score.weight")
    num_classes = int(cls.shape[0]) - 1 if cls is not None else None
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, val in state.items():
        name = _rename(key, fpn_index)
        if name is None:
            unmapped.append(key)
            continue
        if perm is not None and name.startswith("rpn.head.cls_logits."):
            val = val[perm]
        elif perm is not None and name.startswith("rpn.head.bbox_pred."):
            val = val.reshape(-1, 4, *val.shape[1:])[perm].reshape(val.shape)
        out[name] = _class_rows(name, val, num_classes)
    _log_stride_note(state, model)
    return out, unmapped


def _check_pixel_stats(state: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Warn when the file's pixel_mean/std (0..255 units) differ from the model's (x 255)."""
    transform = getattr(model, "transform", None)
    for key, attr in (("pixel_mean", "image_mean"), ("pixel_std", "image_std")):
        if key not in state or transform is None:
            continue
        file_vals = [float(v) for v in state[key].flatten()]
        model_vals = [255.0 * float(v) for v in getattr(transform, attr)]
        if len(file_vals) != len(model_vals) or max(abs(a - b) for a, b in zip(file_vals, model_vals)) > 1e-2:
            logger.warning(
                "detectron2 weights were trained with %s %s (0..255 scale); this model uses %s. Set "
                "MODEL.PIXEL_%s to the file's values / 255 "
                "(see configs/Base-MaskRCNN-FPN-detectron2-weights.yaml)",
                key,
                [round(v, 3) for v in file_vals],
                [round(v, 3) for v in model_vals],
                key.split("_")[1].upper(),
            )


def _log_stride_note(state: dict[str, torch.Tensor], model: nn.Module) -> None:
    bottleneck = any(k.endswith(".conv3.weight") for k in state if k.startswith("backbone.bottom_up.res"))
    if bottleneck:
        logger.info(
            "detectron2 bottleneck weights loaded into a ResNet with the stride in the %s conv "
            "(MODEL.RESNETS.STRIDE_IN_1X1 %s; detectron2's MSRA-based model zoo needs True)",
            "1x1" if getattr(model.backbone.body, "stride_in_1x1", False) else "3x3",
            bool(getattr(model.backbone.body, "stride_in_1x1", False)),
        )
