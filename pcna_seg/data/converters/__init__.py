"""Converters: one module per source format, each exposing ``convert(src, out, **options)``.

Every converter writes the standard prepared-dataset folder (see ``pcna_seg.data.coco_io``):
COCO JSON with RLE masks, a leak-free train/val split and a dataset card.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pcna_seg.data.registry import lazy_entry

# format name → "module:function" (imported lazily so a missing optional dependency of one
# converter never breaks the others)
CONVERTERS: dict[str, str] = {
    "dsb2018": "pcna_seg.data.converters.dsb2018:convert",
    "deepcell_npz": "pcna_seg.data.converters.deepcell:convert_npz",
    "deepcell_trks": "pcna_seg.data.converters.deepcell:convert_trks",
    "ctc": "pcna_seg.data.converters.ctc:convert",
    "pcna_via": "pcna_seg.data.converters.pcna_via:convert_via",
    "pcna_masks": "pcna_seg.data.converters.pcna:convert_masks",
    "bbbc039": "pcna_seg.data.converters.bbbc039:convert",
    "livecell": "pcna_seg.data.converters.livecell:convert",
}


def get_converter(fmt: str) -> Callable[..., Any]:
    """The ``convert`` function for ``fmt``; ValueError lists the known formats."""
    return lazy_entry(CONVERTERS, fmt, "dataset format")
