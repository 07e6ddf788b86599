"""Mask R-CNN construction (torchvision engine), weight loading and the optional detectron2 check."""

from pcna_seg.modeling.build import PcnaMaskRCNN, build_backbone, build_model, resolve_device
from pcna_seg.modeling.d2_adapter import check_engine, detectron2_available
from pcna_seg.modeling.weights import LoadReport, load_weights

__all__ = [
    "LoadReport",
    "PcnaMaskRCNN",
    "build_backbone",
    "build_model",
    "check_engine",
    "detectron2_available",
    "load_weights",
    "resolve_device",
]
