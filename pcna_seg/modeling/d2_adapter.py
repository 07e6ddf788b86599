"""Optional detectron2 engine: availability check and the ``pcna_seg info`` line.

pcna_seg trains and predicts with torchvision's Mask R-CNN everywhere. ``MODEL.ENGINE:
detectron2`` (:mod:`pcna_seg.modeling.d2_engine`) needs an install that has detectron2; this
module answers whether it is importable and turns a request for it into a clear error when it
is not. It never imports detectron2 at module import time and never installs it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from pcna_seg.errors import ConfigError

ENGINES = ("torchvision", "detectron2")


def detectron2_available() -> bool:
    """True when ``import detectron2`` would find a package (it is not imported here)."""
    try:
        return importlib.util.find_spec("detectron2") is not None
    except (ImportError, ValueError):
        return False


def detectron2_status() -> str:
    """One line for ``pcna_seg info``: whether detectron2 imports, its version and location, and
    whether its compiled ops load (registry re-uploads without C++ sources import but lack them).

    This imports detectron2 when it is installed (a diagnostic; never done at import time).
    """
    if not detectron2_available():
        return "not installed (optional; the torchvision engine is used, detectron2 weights still load)"
    try:
        import detectron2
    except Exception as exc:  # a broken install must not crash the diagnostic
        return f"installed but not importable ({type(exc).__name__}: {exc})"
    where = Path(getattr(detectron2, "__file__", "") or ".").resolve().parent
    try:
        from detectron2 import _C  # noqa: F401

        ops = "compiled ops ok"
    except Exception as exc:
        ops = f"compiled ops missing ({type(exc).__name__})"
    return f"importable ({getattr(detectron2, '__version__', 'unknown version')}, {where}, {ops})"


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
