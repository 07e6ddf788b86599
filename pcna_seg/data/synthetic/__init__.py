"""Synthetic data in every on-disk format the converters read.

Each writer is ``write(out: Path, *, seed: int = 0, **size_options) -> GroundTruth`` and lays
files out exactly as the real dataset is laid out; the returned ground truth equals, pixel
for pixel, what the matching converter reads back. :func:`write_synthetic` applies the
output-folder rule (a non-empty folder only with ``overwrite``, replaced as a whole).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pcna_seg.data.registry import lazy_entry

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
    return lazy_entry(WRITERS, fmt, "synthetic format")


def write_synthetic(
    formats: list[str],
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    nested: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Write each format's synthetic data; returns format → GroundTruth.

    With ``nested`` each format goes to ``out/<format>``, else (one format) to ``out``. ``out``
    follows the output-folder rule: missing or empty, or replaced as a whole with
    ``overwrite`` (built aside, swapped in when every format is written; a failure leaves the
    old folder as it was). ``options`` go to every writer.
    """
    from pcna_seg.utils_io import output_folder

    if not nested and len(formats) != 1:
        raise ValueError("write_synthetic: several formats need nested=True (one folder each)")
    writers = {fmt: get_writer(fmt) for fmt in formats}
    results = {}
    with output_folder(out, overwrite=overwrite) as target:
        for fmt, write in writers.items():
            results[fmt] = write(Path(target) / fmt if nested else Path(target), **options)
    return results
