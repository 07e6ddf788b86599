"""Evaluation: COCO bbox/segm AP with pycocotools, phase confusion, and PNG reports."""

from pcna_seg.evaluation.coco_eval import (
    COCOEvaluator,
    evaluate_predictions,
    inference_on_dataset,
    instances_to_coco,
    phase_confusion,
)
from pcna_seg.evaluation.report import plot_confusion, plot_training_curves

__all__ = [
    "COCOEvaluator",
    "evaluate_predictions",
    "inference_on_dataset",
    "instances_to_coco",
    "phase_confusion",
    "plot_confusion",
    "plot_training_curves",
]
