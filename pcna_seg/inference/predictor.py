"""Predict with a trained Mask R-CNN: one frame in, one :class:`Prediction` at the original size out.

:class:`Predictor` builds the model from a config, loads a checkpoint and prepares inputs with
the one input pipeline (:class:`~pcna_seg.data.pipeline.InputPipeline`: the same channel
recipe, percentile normalisation, lowered-Otsu mask and pixel scale as training and
evaluation). The scale the model was trained at comes from its checkpoint.

Two ways in:

- ``predict_record(record)``: a dataset record (DESIGN.md format); its files are read;
- ``predict_arrays({"pcna": (H, W), "dic": (H, W), ...})``: channels already in memory. Keys
  are recipe names (``"gray"``, ``"pcna"``, ``"dic"``, ...). Nothing is written to disk.

Outputs go through the one postprocess (:func:`pcna_seg.modeling.postprocess.to_prediction`):
boxes scaled to the original pixels, each mask pasted into its own box crop.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pcna_seg.data.channels import GRAY, OTSU, resolve_otsu_source
from pcna_seg.data.pipeline import InputPipeline, ModelInput
from pcna_seg.errors import ConfigError, DataError, PcnaSegError, WeightsError
from pcna_seg.modeling.instances import Prediction
from pcna_seg.modeling.postprocess import mask_paste_of, to_prediction

logger = logging.getLogger(__name__)


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


def checkpoint_metadata(weights: str | os.PathLike) -> dict[str, Any]:
    """``class_names`` and ``scale`` stored in a checkpoint (empty entries when absent)."""
    from pcna_seg.engine.checkpoint import read_checkpoint

    data = read_checkpoint(weights)
    return {"class_names": data.get("class_names") or [], "scale": data.get("scale") or {}}


class Predictor:
    """A trained Mask R-CNN ready to predict single frames (eval mode, ``MODEL.DEVICE``).

    ``weights``: a checkpoint from ``tools/train_net.py`` (or a plain state dict). Every
    parameter must fit the config: a head the config would re-initialise (another NUM_CLASSES,
    another channel count) is a :class:`WeightsError`, never silently random. ``diameter``
    (native pixels, ``--diameter``) is the inputs' nucleus diameter for ``object_size`` models
    (0 = ``INPUT.SCALE.TEST_DIAMETER``, else estimated from each image).
    """

    def __init__(
        self,
        cfg: Any,
        weights: str | os.PathLike,
        class_names: Sequence[str] | None = None,
        diameter: float = 0.0,
    ) -> None:
        from pcna_seg.engine.checkpoint import load_model_weights
        from pcna_seg.modeling import build_model

        if not 0 <= diameter < float("inf"):
            raise ConfigError(f"--diameter must be > 0 (nucleus diameter in pixels), got {diameter}")
        self.cfg = cfg
        meta = checkpoint_metadata(weights)
        self.train_scale: dict[str, Any] = dict(meta["scale"])
        self.pipeline = InputPipeline.from_config(
            cfg, train_diameter=float(self.train_scale.get("train_diameter", 0.0))
        )
        self.diameter = float(diameter)
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
        diameter: float = 0.0,
    ) -> Predictor:
        """Config from ``config_file`` or beside/inside the weights (see :func:`load_predict_config`)."""
        return cls(load_predict_config(weights, config_file, opts), weights, diameter=diameter)

    @property
    def recipe(self) -> list[str]:
        """INPUT.CHANNELS: the model's input channel names, in order."""
        return list(self.pipeline.channels)

    def required_channels(self, names: Sequence[str]) -> list[str]:
        """Raw channels an input offering ``names`` must provide for the recipe (Otsu source included)."""
        chans = {n: n for n in names if n != GRAY}
        need = []
        for name in self.recipe:
            if name == OTSU:
                name = resolve_otsu_source({"channels": chans}, self.pipeline.norm.otsu_source)
            if name not in need:
                need.append(name)
        return need

    # -------------------------------------------------------------------------------- inputs
    def normalize(self, channels: dict[str, np.ndarray], source: str = "<arrays>") -> dict[str, np.ndarray]:
        """Raw channels {name: (H, W)} → recipe planes {recipe name: (H, W) float32 in [0, 1]}.

        Percentile normalisation and the Otsu mask use the whole image given here.
        """
        loader = self.pipeline.array_loader(dict(channels), source)
        planes = {name: loader.channel(name) for name in dict.fromkeys(self.recipe)}
        shapes = {p.shape for p in planes.values()}
        if len(shapes) > 1:
            raise DataError(f"Channels of {source} differ in size: {sorted(shapes)}")
        return planes

    def _stack(self, planes: dict[str, np.ndarray]) -> np.ndarray:
        return np.stack([planes[name] for name in self.recipe], axis=-1).astype(np.float32, copy=False)

    def input_diameter(self, channels: dict[str, np.ndarray], source: str = "<arrays>") -> float:
        """The nucleus diameter (native px) an input is scaled by; warns on a training-size mismatch."""
        loader = self.pipeline.array_loader(dict(channels), source)
        self.pipeline.warn_size(loader, source)
        return self.pipeline.test_diameter(loader, self.diameter)

    def to_model_scale(self, planes: dict[str, np.ndarray], diameter: float = 0.0) -> ModelInput:
        """Normalised planes at native pixels → the whole image at model scale (once, e.g. for tiling)."""
        return self.pipeline.prepare_planes(self._stack(planes), diameter or self.diameter, "tiled field")

    def predict_planes(self, planes: dict[str, np.ndarray], diameter: float = 0.0) -> Prediction:
        """Recipe planes (from :meth:`normalize`) at native pixels → Prediction at their size."""
        mi = self.pipeline.prepare_planes(self._stack(planes), diameter or self.diameter)
        return self._run(mi)

    def predict_model_planes(self, planes: dict[str, np.ndarray]) -> Prediction:
        """Recipe planes already at model scale (a tile) → Prediction in that same frame."""
        tensor = torch.from_numpy(np.ascontiguousarray(self._stack(planes).transpose(2, 0, 1)))
        return self._run(ModelInput(tensor, tuple(tensor.shape[-2:])))

    def predict_arrays(self, channels: dict[str, np.ndarray], source: str = "<arrays>") -> Prediction:
        """Raw channels {name: (H, W) any real dtype} → Prediction at (H, W)."""
        diameter = self.input_diameter(channels, source)
        return self.predict_planes(self.normalize(channels, source), diameter)

    __call__ = predict_arrays

    def predict_record(self, record: dict[str, Any]) -> Prediction:
        """A dataset record (files on disk) → Prediction at the record's original size."""
        loader = self.pipeline.record_loader(record)
        return self._run(self.pipeline.prepare(loader, self.diameter))

    @torch.no_grad()
    def _run(self, mi: ModelInput) -> Prediction:
        output = self.model([mi.image.to(self.device)])[0]
        output = {k: v.detach().cpu() for k, v in output.items()}
        self._warn_if_capped(len(output["scores"]), mi)
        return to_prediction(output, mi.model_hw, mi.orig_hw, self.class_names, mask_paste_of(self.model))

    def _warn_if_capped(self, n: int, mi: ModelInput) -> None:
        """Warn (once) when a frame's detections reach a limit that would cut a dense field."""
        cfg = self.cfg
        limits = {
            "TEST.DETECTIONS_PER_IMAGE": int(cfg.TEST.DETECTIONS_PER_IMAGE),
            "MODEL.RPN.POST_NMS_TOPK_TEST": int(cfg.MODEL.RPN.POST_NMS_TOPK_TEST),
        }
        hit = [k for k, v in limits.items() if n >= 0.9 * v]
        if hit and not getattr(self, "_capped_warned", False):
            self._capped_warned = True
            logger.warning(
                "%d detections in a %dx%d input reach %s; a dense field may have more nuclei: raise %s "
                "or predict in tiles (--tile)",
                n,
                *mi.model_hw,
                " and ".join(f"{k} {limits[k]}" for k in hit),
                " / ".join(hit),
            )
