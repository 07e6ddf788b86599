"""The evaluator interface, a list of evaluators as one, the config's choice, and the inference loop.

An evaluator collects model outputs over a dataset and scores them:

- ``reset()`` — forget what was collected;
- ``process(inputs, outputs)`` — one batch: the mapper dicts given to the model and its outputs;
- ``evaluate() -> {task: {metric: value}}`` — the scores (main process; others may return {}).

``TEST.EVALUATORS`` names the evaluators a Mask R-CNN run uses on each ``DATASETS.TEST``
dataset; :func:`register_evaluator` adds a name (a factory ``(cfg, dataset, folder) ->
evaluator``). ``"coco"`` is COCO box/mask AP plus cell-level F1/PQ/DSB/SEG and phase metrics
(:class:`pcna_seg.evaluation.coco_eval.COCOEvaluator`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pcna_seg.errors import ConfigError

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """Base class: ``reset`` / ``process`` / ``evaluate`` (see the module docstring)."""

    dataset_name = ""
    model_class_names: list[str] | None = None
    mask_paste = "torchvision"  # how the model's box-frame masks go into images (set from the model)

    def reset(self) -> None:
        pass

    def process(self, inputs: list[dict[str, Any]], outputs: list[Any]) -> None:
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any]:
        raise NotImplementedError


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators as one: each sees every batch; their results are merged (a task two
    evaluators both report is a ConfigError rather than one silently replacing the other)."""

    def __init__(self, evaluators: Sequence[DatasetEvaluator]) -> None:
        self.evaluators = list(evaluators)
        self.dataset_name = next((e.dataset_name for e in self.evaluators if e.dataset_name), "")

    @property  # type: ignore[override]
    def model_class_names(self) -> list[str] | None:
        return next((e.model_class_names for e in self.evaluators if e.model_class_names), None)

    @model_class_names.setter
    def model_class_names(self, names: list[str] | None) -> None:
        for e in self.evaluators:
            e.model_class_names = names

    @property  # type: ignore[override]
    def mask_paste(self) -> str:
        return self.evaluators[0].mask_paste if self.evaluators else "torchvision"

    @mask_paste.setter
    def mask_paste(self, mode: str) -> None:
        for e in self.evaluators:
            e.mask_paste = mode

    def reset(self) -> None:
        for e in self.evaluators:
            e.reset()

    def process(self, inputs: list[dict[str, Any]], outputs: list[Any]) -> None:
        for e in self.evaluators:
            e.process(inputs, outputs)

    def evaluate(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for e in self.evaluators:
            for task, value in (e.evaluate() or {}).items():
                if task in out:
                    raise ConfigError(
                        f"Two evaluators in TEST.EVALUATORS both report {task!r}; keep one of them"
                    )
                out[task] = value
        return out


Factory = Callable[[Any, str, Path | None], DatasetEvaluator]


def _coco(cfg: Any, dataset: str, folder: Path | None) -> DatasetEvaluator:
    from pcna_seg.evaluation.coco_eval import COCOEvaluator

    return COCOEvaluator(
        dataset,
        folder,
        max_dets=cfg.TEST.MAX_DETS,
        root=cfg.DATASETS.ROOT,
        confusion_iou=cfg.TEST.CONFUSION_IOU,
        confusion_score=cfg.TEST.CONFUSION_SCORE_THRESH,
    )


_EVALUATORS: dict[str, Factory] = {"coco": _coco}


def register_evaluator(name: str, factory: Factory) -> None:
    """Make ``name`` usable in ``TEST.EVALUATORS``; ``factory(cfg, dataset, folder)`` builds it."""
    _EVALUATORS[name] = factory


def evaluator_names() -> list[str]:
    return sorted(_EVALUATORS)


def check_evaluator_names(names: Sequence[str]) -> None:
    """ConfigError naming ``TEST.EVALUATORS`` and the known names for an unknown or missing one."""
    if not names:
        raise ConfigError(f"TEST.EVALUATORS is empty; name at least one of {evaluator_names()}")
    unknown = [n for n in names if n not in _EVALUATORS]
    if unknown:
        raise ConfigError(f"TEST.EVALUATORS has unknown {unknown}; known evaluators: {evaluator_names()}")


def build_evaluator(cfg: Any, dataset: str, folder: Path | None = None) -> DatasetEvaluator:
    """The evaluator(s) ``TEST.EVALUATORS`` names for ``dataset``, writing into ``folder``."""
    names = list(cfg.TEST.EVALUATORS)
    check_evaluator_names(names)
    built = [_EVALUATORS[n](cfg, dataset, folder) for n in names]
    return built[0] if len(built) == 1 else DatasetEvaluators(built)


@torch.no_grad()
def inference_on_dataset(
    model: torch.nn.Module,
    data_loader: Any,
    evaluator: DatasetEvaluator,
    device: torch.device | str = "cpu",
    amp: bool = False,
) -> dict[str, Any]:
    """Run ``model`` in eval mode over ``data_loader`` (batches = lists of mapper dicts) and evaluate.

    The model's training mode is restored afterwards. Returns ``evaluator.evaluate()``.
    """
    from tqdm import tqdm

    from pcna_seg.engine.launch import is_main_process
    from pcna_seg.modeling.postprocess import mask_paste_of

    evaluator.reset()
    if evaluator.model_class_names is None and getattr(model, "class_names", None):
        evaluator.model_class_names = list(model.class_names)
    evaluator.mask_paste = mask_paste_of(model)
    was_training = model.training
    model.eval()
    device = torch.device(device)
    use_amp = amp and device.type == "cuda"
    try:
        for batch in tqdm(data_loader, desc=f"eval {evaluator.dataset_name}", disable=not is_main_process()):
            images = [d["image"].to(device) for d in batch]
            with torch.autocast(device_type=device.type, enabled=use_amp):
                outputs = model(images)
            outputs = [{k: v.detach().cpu() for k, v in o.items()} for o in outputs]
            evaluator.process(batch, outputs)
    finally:
        model.train(was_training)
    return evaluator.evaluate()
