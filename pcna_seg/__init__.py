"""pcna_seg: nucleus instance segmentation and cell-cycle phase calling for PCNA microscopy."""

__version__ = "0.1.0"

from pcna_seg.errors import PcnaSegError  # noqa: E402

__all__ = ["PcnaSegError", "__version__"]
