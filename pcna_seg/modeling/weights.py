"""Load weights into a built model: project checkpoints, torchvision Mask R-CNN state dicts,
or bare torchvision ResNet (ImageNet) state dicts, with head re-initialisation.

Accepted files (read with ``torch.load(weights_only=True)``; no Python objects are unpickled
unless ``allow_pickle=True`` is passed for a file you trust):

- a project checkpoint: ``{"model": state_dict, "optimizer": ..., "iteration": int,
  "cfg": yaml str, ...}``; only ``"model"`` is used here;
- a torchvision Mask R-CNN state dict (e.g. ``maskrcnn_resnet50_fpn`` COCO weights), including
  the old key layout (``rpn.head.conv.weight``, ``roi_heads.mask_head.mask_fcn1.weight``);
- a bare torchvision ResNet state dict (``conv1.weight``, ``layer1.0...``), loaded into
  ``backbone.body``; its ``fc.*`` classifier is ignored;
- a detectron2 checkpoint: a model-zoo ``.pkl`` (numpy arrays, read by a numpy-only
  unpickler) or a detectron2 ``.pth``, recognised by its parameter names and converted by
  :mod:`pcna_seg.modeling.d2_weights` (detectron2 is never imported).

Rules:
- the class-specific layers (box ``cls_score``, box ``bbox_pred``, mask ``mask_fcn_logits``)
  keep the model's fresh initialisation when their shape differs (another NUM_CLASSES);
- the stem conv ``backbone.body.conv1.weight`` with another input-channel count is adapted:
  every new input channel gets ``sum(source channels) / C_new`` (C_new = 1 gives the plain sum),
  so a grey image repeated over the channels produces the same response as before;
- any other shape mismatch raises WeightsError naming the parameter and both shapes
  (``strict_shapes=False`` keeps the model's tensor and lists it as re-initialised instead);
- ``strict=True`` (evaluation, prediction: the weights must *be* the model) refuses anything
  that would not come from the file: a re-initialised head, an adapted stem or a parameter
  missing from the file is a WeightsError naming the parameter and both shapes;
- ``module.`` prefixes (DataParallel/DDP) are stripped; ``num_batches_tracked`` is ignored.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pcna_seg.errors import WeightsError
from pcna_seg.modeling.d2_weights import convert_d2_state, d2_names, is_d2_state
from pcna_seg.modeling.heads import CLASS_SPECIFIC_PREFIXES

logger = logging.getLogger(__name__)

STEM_KEY = "backbone.body.conv1.weight"


@dataclass
class LoadReport:
    """What :func:`load_weights` did, parameter by parameter (names are the model's)."""

    path: str
    source_format: str = "torchvision"  # or "detectron2" (converted by d2_weights)
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # stem conv with another channel count
    reinitialised: list[str] = field(default_factory=list)  # kept the model's fresh values
    ignored: list[str] = field(default_factory=list)  # in the file, not in the model
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    def table(self, max_names: int = 8) -> str:
        """Plain-text table: one row per category with a count and the first names."""
        rows = [
            ("loaded", self.loaded),
            ("adapted (input channels)", self.adapted),
            ("re-initialised", self.reinitialised),
            ("ignored (unexpected)", self.ignored),
            ("missing (kept init)", self.missing),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [
            f"Weights from {self.path} ({self.source_format} names)",
            f"{'category'.ljust(width)}  count  parameters",
        ]
        for name, items in rows:
            shown = ", ".join(_describe(n, self.shapes) for n in items[:max_names])
            if len(items) > max_names:
                shown += f", ... (+{len(items) - max_names})"
            lines.append(f"{name.ljust(width)}  {len(items):5d}  {shown}")
        return "\n".join(lines)


def _describe(name: str, shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> str:
    if name in shapes:
        src, dst = shapes[name]
        return f"{name} {list(src)}->{list(dst)}"
    return name


def read_state_dict(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a weights file and return its model state dict (tensors on CPU).

    WeightsError when the file is missing, unreadable/corrupt, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"Weights file not found: {path} (set MODEL.WEIGHTS to a checkpoint, a downloaded "
            f"torchvision .pth or detectron2 .pkl file, or to '' for random initialisation)"
        )
    from pcna_seg.engine.checkpoint import read_checkpoint

    obj = read_checkpoint(path, allow_pickle=allow_pickle)
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(
            f"Weights file {path} holds no state dict (expected a dict of tensors or {{'model': ...}})"
        )
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def normalize_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a source state dict onto this project's (= current torchvision's) parameter names."""
    out: dict[str, torch.Tensor] = {}
    bare_resnet = "conv1.weight" in state and not any(k.startswith("backbone.") for k in state)
    for key, val in state.items():
        while key.startswith("module."):
            key = key[len("module.") :]
        if key.endswith("num_batches_tracked"):
            continue
        if bare_resnet:
            if key.startswith("fc."):
                continue
            key = "backbone.body." + key
        if key.startswith("rpn.head.conv.") and key.count(".") == 3:  # old: rpn.head.conv.weight
            key = "rpn.head.conv.0.0." + key.rsplit(".", 1)[1]
        if key.startswith("roi_heads.mask_head.mask_fcn"):  # old: mask_fcn{i}.weight
            idx, leaf = key[len("roi_heads.mask_head.mask_fcn") :].split(".", 1)
            if idx.isdigit():
                key = f"roi_heads.mask_head.{int(idx) - 1}.0.{leaf}"
        out[key] = val
    return out


def adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """(O, C_src, k, k) stem conv → (O, in_channels, k, k): each channel = sum over C_src / C_new."""
    summed = weight.sum(dim=1, keepdim=True) / float(in_channels)
    return summed.repeat(1, in_channels, 1, 1).contiguous()


def check_strict(report: LoadReport, model_shapes: dict[str, tuple[int, ...]] | None = None) -> None:
    """WeightsError unless every model parameter came unchanged from the file (see ``strict``).

    ``model_shapes`` (name → shape) lets the message give the expected shape of a missing one.
    """
    bad = [*report.reinitialised, *report.adapted, *report.missing]
    if not bad:
        return
    name = bad[0]
    if name in report.shapes:
        src, dst = report.shapes[name]
        what = f"parameter {name} has shape {list(src)} in the file but the model expects {list(dst)}"
    else:
        shape = (model_shapes or {}).get(name)
        what = f"parameter {name} is not in the file" + (
            f" (the model expects shape {list(shape)})" if shape is not None else ""
        )
    more = f" ({len(bad) - 1} more parameters differ or are missing)" if len(bad) > 1 else ""
    raise WeightsError(
        f"Weights file {report.path} does not fit the model: {what}{more}; it would be evaluated with "
        "re-initialised parameters. Use the config the model was trained with "
        "(MODEL.ROI_HEADS.NUM_CLASSES, INPUT.CHANNELS, head sizes)"
    )


def load_weights(
    model: nn.Module,
    path: str | os.PathLike,
    strict_shapes: bool = True,
    allow_pickle: bool = False,
    strict: bool = False,
) -> LoadReport:
    """Load ``path`` into ``model`` in place and return the :class:`LoadReport` (also logged).

    See the module docstring for accepted files and the re-initialisation rules. With
    ``strict`` nothing is copied unless every parameter fits (:func:`check_strict`).
    """
    raw = read_state_dict(path, allow_pickle=allow_pickle)
    report = LoadReport(path=str(path))
    unmapped: list[str] = []
    d2_engine = getattr(model, "engine", "torchvision") == "detectron2"
    stem_key, class_prefixes = STEM_KEY, CLASS_SPECIFIC_PREFIXES
    if d2_engine:  # detectron2's own model: its names, no conversion
        if not is_d2_state(raw):
            raise WeightsError(
                f"Weights file {path} has torchvision parameter names; MODEL.ENGINE detectron2 loads "
                "detectron2 checkpoints (.pkl / .pth) only. Use MODEL.ENGINE torchvision for this file"
            )
        from pcna_seg.modeling.d2_engine import D2_CLASS_SPECIFIC_PREFIXES, D2_STEM_KEY

        source, unmapped = d2_names(raw), []
        stem_key, class_prefixes = D2_STEM_KEY, D2_CLASS_SPECIFIC_PREFIXES
        report.source_format = "detectron2"
    elif is_d2_state(raw):
        source, unmapped = convert_d2_state(raw, model)
        report.source_format = "detectron2"
    else:
        source = normalize_keys(raw)
    target = model.state_dict()
    new_state: dict[str, torch.Tensor] = {}
    for name, dst in target.items():
        if name.endswith("num_batches_tracked"):  # a BN counter, not a weight: never reported
            continue
        if name not in source:
            report.missing.append(name)
            continue
        src = source[name]
        if src.shape == dst.shape:
            new_state[name] = src.to(dtype=dst.dtype)
            report.loaded.append(name)
        elif (
            name == stem_key
            and src.dim() == 4
            and src.shape[0] == dst.shape[0]
            and src.shape[2:] == dst.shape[2:]
        ):
            new_state[name] = adapt_stem(src, dst.shape[1]).to(dtype=dst.dtype)
            report.adapted.append(name)
            report.shapes[name] = (tuple(src.shape), tuple(dst.shape))
        elif name.startswith(class_prefixes) or not strict_shapes:
            report.reinitialised.append(name)
            report.shapes[name] = (tuple(src.shape), tuple(dst.shape))
        else:
            raise WeightsError(
                f"Weights file {path}: parameter {name} has shape {list(src.shape)} but the model "
                f"expects {list(dst.shape)}; the file was made for another architecture (check "
                f"MODEL.RESNETS.DEPTH, MODEL.FPN.OUT_CHANNELS and the head sizes)"
            )
    report.ignored = sorted([*(k for k in source if k not in target), *unmapped])
    if not report.loaded and not report.adapted:
        raise WeightsError(f"Weights file {path} shares no parameter names with the model; nothing to load")
    if strict:
        check_strict(report, {n: tuple(t.shape) for n, t in target.items()})
    with torch.no_grad():
        for name, tensor in new_state.items():
            target[name].copy_(tensor)
    logger.info("%s", report.table())
    if report.missing:
        logger.warning(
            "%d model parameters were not in %s and keep their initial values", len(report.missing), path
        )
    return report
