"""Optional detectron2 engine: availability check only.

pcna_seg trains and predicts with torchvision's Mask R-CNN everywhere. ``MODEL.ENGINE:
detectron2`` is reserved for installs that have detectron2; this module only answers whether
it is importable and turns a request for it into a clear error when it is not. It never
imports detectron2 at module import time and never installs it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from pcna_seg.errors import ConfigError

ENGINES = ("torchvision", "detectron2")


def detectron2_available() -> bool:
    """True when ``import detectron2`` would find a package (it is not imported here)."""
    try:
        return importlib.util.find_spec("detectron2") is not None
    except (ImportError, ValueError):
        return False


def check_engine(cfg: Any) -> str:
    """Validate ``MODEL.ENGINE`` and return it.

    Raises ConfigError for an unknown engine, or for ``"detectron2"`` when detectron2 is not
    importable (the message says to use the always-available ``torchvision`` engine).
    """
    engine = str(cfg.MODEL.ENGINE)
    if engine not in ENGINES:
        raise ConfigError(f"MODEL.ENGINE must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "detectron2" and not detectron2_available():
        raise ConfigError(
            "MODEL.ENGINE is 'detectron2' but detectron2 is not installed; set MODEL.ENGINE torchvision "
            "(same config keys and records) or install detectron2 from its source tree"
        )
    return engine
