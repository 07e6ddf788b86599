"""Fixtures shared by the U-Net tests."""

from __future__ import annotations

import pytest

from pcna_seg.config import load_config

TILING = ["UNET.TILING.TILE", "32", "UNET.TILING.STRIDE", "16", "UNET.TILING.WORKERS", "0"]


@pytest.fixture(scope="module")
def h5_tiles(tmp_path_factory):
    """Train/val tile files (32 px tiles, stride 16) of small synthetic live/dead frames, and under
    ``"opts"`` the tiling keys they were made with (a training config must repeat them)."""
    from pcna_seg.data.synthetic.write_livedead import write as write_livedead
    from pcna_seg.unet.tiling import run_tiling

    root = tmp_path_factory.mktemp("h5")
    write_livedead(root / "frames", wells=("A1", "A2", "B1"), timepoints=1, height=96, width=96, seed=0)
    cfg = load_config(opts=[*TILING, "UNET.TILING.VAL_FRACTION", "0.34"])
    return {**run_tiling(cfg, root / "frames", root / "t.h5", progress=False), "opts": list(TILING)}
