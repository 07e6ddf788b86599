"""Synthetic Cell Tracking Challenge (CTC) 2D dataset, laid out as the challenge ships it::

    OUT/<dataset>/01/t000.tif ...             raw frames, (H, W) uint16
    OUT/<dataset>/01_GT/SEG/man_seg000.tif    uint16 instance labels for a subset of frames
    OUT/<dataset>/01_GT/TRA/man_track000.tif  uint16 track markers for every frame
    OUT/<dataset>/01_GT/TRA/man_track.txt     one line per track: "L B E P"
    OUT/<dataset>/01_ST/SEG/man_seg000.tif    silver truth for every frame (optional)
    OUT/<dataset>/02/...                      second sequence

SEG label ids are arbitrary (not track ids), TRA markers are track labels with a one-pixel
rim removed; silver truth is the exact labels with a one-pixel rim removed (so it differs from
the gold truth where both exist). Frame numbers use ``digits`` (3, or 4 for long movies).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.segmentation import find_boundaries

from pcna_seg.data.image_io import write_image
from pcna_seg.data.synthetic.base import GroundTruth, single_class_image
from pcna_seg.data.synthetic.realism import Realism, resolve
from pcna_seg.data.synthetic.write_deepcell import CLASS_NAMES, make_tracked_movie
from pcna_seg.utils_io import write_text_atomic


def _shrink(labels: np.ndarray) -> np.ndarray:
    """Labels with each instance's inner one-pixel rim set to background."""
    out = labels.copy()
    out[find_boundaries(labels, mode="inner")] = 0
    return out


def _relabel(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Labels with ids replaced by a random permutation of 1..N (SEG ids are not track ids)."""
    ids = np.unique(labels[labels > 0])
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint16)
    lut[ids] = rng.permutation(len(ids)) + 1
    return lut[labels]


def write(
    out: str | Path,
    *,
    seed: int = 0,
    n_images: int = 6,
    height: int = 128,
    width: int = 128,
    n_sequences: int = 2,
    n_nuclei: int = 10,
    seg_every: int = 2,
    digits: int = 3,
    silver_truth: bool = False,
    dataset: str = "Fluo-N2DL-Synth",
    style: str | Realism = "clean",
) -> GroundTruth:
    """Write ``OUT/<dataset>/`` with ``n_sequences`` movies of ``n_images`` frames each.

    Gold SEG exists for frames 0, ``seg_every``, 2·``seg_every`` …; the last sequence starts
    with a blank frame. With ``silver_truth`` every frame also gets ``NN_ST/SEG``, and the
    ground truth then includes the silver-only frames (what ``convert(...,
    use_silver_truth=True)`` reads); otherwise only gold frames. Keys
    ``<dataset>_<NN>_t<frame>``, sequences ``<dataset>_<NN>``.
    ``style``: "clean" (default) or "realistic" / a ``Realism`` (acquisition simulator).
    """
    if digits not in (3, 4):
        raise ValueError(f"digits must be 3 or 4, got {digits}")
    rng = np.random.default_rng(seed)
    root = Path(out) / dataset
    gt = GroundTruth(format="ctc", class_names=list(CLASS_NAMES))
    for s in range(n_sequences):
        seq = f"{s + 1:02d}"
        movie = make_tracked_movie(
            rng, n_images, height, width, n_nuclei, blank_first=(s == n_sequences - 1), realism=resolve(style)
        )
        lines = []
        for tid, entry in sorted(movie.lineage.items()):
            frames = entry["frames"]
            lines.append(f"{tid} {min(frames)} {max(frames)} {entry['parent'] or 0}")
        write_text_atomic(root / f"{seq}_GT" / "TRA" / "man_track.txt", "\n".join(lines) + "\n")
        for t in range(n_images):
            stem = f"{t:0{digits}d}"
            write_image(root / seq / f"t{stem}.tif", movie.raw[t].astype(np.uint16))
            tracks = movie.tracks[t]
            write_image(
                root / f"{seq}_GT" / "TRA" / f"man_track{stem}.tif", _shrink(tracks).astype(np.uint16)
            )
            labels = None
            if t % seg_every == 0:
                labels = _relabel(rng, tracks)
                write_image(root / f"{seq}_GT" / "SEG" / f"man_seg{stem}.tif", labels)
            if silver_truth:
                silver = _relabel(rng, _shrink(tracks))
                write_image(root / f"{seq}_ST" / "SEG" / f"man_seg{stem}.tif", silver)
                labels = silver if labels is None else labels
            if labels is not None:
                gt.images.append(
                    single_class_image(f"{dataset}_{seq}_t{stem}", labels, "nucleus", f"{dataset}_{seq}")
                )
    return gt
