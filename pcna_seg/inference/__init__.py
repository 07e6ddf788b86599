"""Inference after training: predictor, tiled prediction of large fields, output writers."""

from pcna_seg.inference.predictor import Prediction, Predictor, load_predict_config, resolve_class_names
from pcna_seg.inference.tiled import predict_tiled, suppress_duplicates, tile_windows
from pcna_seg.inference.writers import (
    InputFrame,
    PredictionWriter,
    check_inputs,
    csv_columns,
    find_inputs,
    object_rows,
    run_prediction,
    write_label_image,
    write_overlay,
)

__all__ = [
    "InputFrame",
    "Prediction",
    "PredictionWriter",
    "Predictor",
    "check_inputs",
    "csv_columns",
    "find_inputs",
    "load_predict_config",
    "object_rows",
    "predict_tiled",
    "resolve_class_names",
    "run_prediction",
    "suppress_duplicates",
    "tile_windows",
    "write_label_image",
    "write_overlay",
]
