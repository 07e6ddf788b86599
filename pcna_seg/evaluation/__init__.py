"""Evaluation: COCO bbox/segm AP with pycocotools, cell-level metrics, phase confusion, PNG reports."""

from pcna_seg.evaluation.coco_eval import (
    COCOEvaluator,
    evaluate_predictions,
    phase_confusion,
    prediction_to_coco,
)
from pcna_seg.evaluation.evaluator import (
    DatasetEvaluator,
    DatasetEvaluators,
    build_evaluator,
    inference_on_dataset,
    register_evaluator,
)
from pcna_seg.evaluation.report import plot_confusion, plot_training_curves

__all__ = [
    "COCOEvaluator",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "build_evaluator",
    "register_evaluator",
    "evaluate_predictions",
    "inference_on_dataset",
    "prediction_to_coco",
    "phase_confusion",
    "plot_confusion",
    "plot_training_curves",
]
