"""Synthetic data in every on-disk format the converters read.

Each writer is ``write(out: Path, *, seed: int = 0, **size_options) -> GroundTruth`` and lays
files out exactly as the real dataset is laid out; the returned ground truth equals, pixel
for pixel, what the matching converter reads back.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# format name (same names as pcna_seg.data.converters.CONVERTERS) → "module:function"
WRITERS: dict[str, str] = {
    "dsb2018": "pcna_seg.data.synthetic.write_dsb2018:write",
    "deepcell_npz": "pcna_seg.data.synthetic.write_deepcell:write_npz",
    "deepcell_trks": "pcna_seg.data.synthetic.write_deepcell:write_trks",
    "ctc": "pcna_seg.data.synthetic.write_ctc:write",
    "pcna_via": "pcna_seg.data.synthetic.write_pcna:write_via",
    "pcna_masks": "pcna_seg.data.synthetic.write_pcna:write_masks",
    "bbbc039": "pcna_seg.data.synthetic.write_bbbc039:write",
    "livecell": "pcna_seg.data.synthetic.write_livecell:write",
}


def get_writer(fmt: str) -> Callable[..., Any]:
    """The synthetic ``write`` function for ``fmt``; ValueError lists the known formats."""
    if fmt not in WRITERS:
        raise ValueError(f"Unknown synthetic format {fmt!r}; known: {', '.join(sorted(WRITERS))}")
    module, func = WRITERS[fmt].split(":")
    return getattr(importlib.import_module(module), func)
