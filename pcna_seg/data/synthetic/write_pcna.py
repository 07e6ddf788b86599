"""Synthetic in-house PCNA movies in the two annotated layouts ("pcna_via", "pcna_masks").

Files written (``<movie>`` = ``mcf10a_s01``, ``mcf10a_s02``, …; all images uint16)::

    stacked=True                          stacked=False
    <movie>_mcy.tif    (T, H, W) PCNA     <movie>_t0000_mcy.tif  (H, W), one file per frame
    <movie>_dic.tif    (T, H, W) DIC      <movie>_t0000_dic.tif
    <movie>_mask.tif   (T, H, W) labels   <movie>_t0000_mask.tif          (write_masks only)
    via_project.json   VIA2 project export, polygon regions       (write_via only)
    phases.csv         movie|file,frame,label,phase                (write_masks only)

VIA entries are named pcnaDeep-style ``<movie>-<t:04d>.png`` for stacked movies and by the
exact per-frame PCNA file name otherwise. Frames come from
:func:`pcna_seg.data.synthetic.nuclei.make_pcna_movie` (the same nuclei drift through a
movie); frame 1 of the first movie (frame 0 when movies have one frame) is replaced by a blank
field, and movies are redrawn until every phase occurs.

Ground truth: ``write_masks`` is an exact round trip of the generator's labels. VIA regions
are polygons traced from the generator's masks with ``cv2.findContours`` (largest outer
contour, integer vertices moved onto the pixels' outer corners, as an annotator's clicks
would be). Traced outlines do not rasterise back to the original masks exactly (IoU ≈ 0.97),
so the ground truth of ``write_via`` is the rasterisation of the written polygons
themselves: ``polygons_to_mask`` of each polygon (pycocotools semantics), empty ones
dropped, overlaps between touching neighbours resolved with ``resolve_overlaps`` (the
smallest keeps contested pixels — the converter's rule), masks emptied by that rule dropped.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2
import numpy as np

from pcna_seg.data.image_io import write_image
from pcna_seg.data.phases import DEFAULT_PHASES, PhaseSet
from pcna_seg.data.structures import masks_to_labels, polygons_to_mask, resolve_overlaps
from pcna_seg.data.synthetic.base import GroundTruth, GroundTruthImage
from pcna_seg.data.synthetic.nuclei import Frame, frame_from_nuclei, image_style, make_pcna_movie
from pcna_seg.data.synthetic.realism import Realism, resolve
from pcna_seg.utils_io import write_json_atomic, write_text_atomic

# spellings an annotator might use, cycled when ``mixed_spellings`` is on
_SPELLINGS = {"G1/G2": ("G1/G2", "G1", "g2"), "S": ("S", "s"), "M": ("M", "mitosis"), "E": ("E", "emerging")}


def _make_movies(
    rng: np.random.Generator,
    n_movies: int,
    n_frames: int,
    height: int,
    width: int,
    n_nuclei: int,
    phases: tuple[str, ...],
    max_tries: int = 50,
    realism: Realism | None = None,
) -> list[tuple[str, list[Frame]]]:
    """``n_movies`` movies of ``n_frames`` frames; one blank frame; every phase present.

    ``realism``: None (clean) or the ranges each movie's acquisition style is drawn from."""
    movies, styles = [], []
    for m in range(n_movies):
        styles.append(image_style(rng, realism, "pcna"))
        frames = make_pcna_movie(rng, n_frames, height, width, n_nuclei, phases, realism=styles[-1])
        movies.append((f"mcf10a_s{m + 1:02d}", frames))
    blank_t = min(1, n_frames - 1)
    movies[0][1][blank_t] = frame_from_nuclei(rng, (height, width), [], styles[0])
    for _ in range(max_tries):
        seen = {p for _, frames in movies for f in frames for p in f.phases.values()}
        if seen >= set(phases) or n_nuclei < len(phases):
            break
        # redraw the last movie (keeps the blank frame in the first one)
        m = len(movies) - 1
        styles[m] = image_style(rng, realism, "pcna")
        frames = make_pcna_movie(rng, n_frames, height, width, n_nuclei, phases, realism=styles[m])
        if m == 0:
            frames[blank_t] = frame_from_nuclei(rng, (height, width), [], styles[m])
        movies[m] = (movies[m][0], frames)
    return movies


def _write_channels(out: Path, movie: str, frames: list[Frame], stacked: bool) -> list[str]:
    """Write the movie's PCNA (``mcy``) and DIC channels; returns the per-frame PCNA names."""
    if stacked:
        for tag, key in (("mcy", "pcna"), ("dic", "dic")):
            write_image(out / f"{movie}_{tag}.tif", np.stack([f.channels[key] for f in frames]))
        return [f"{movie}_mcy.tif"] * len(frames)
    names = []
    for t, f in enumerate(frames):
        write_image(out / f"{movie}_t{t:04d}_mcy.tif", f.channels["pcna"])
        write_image(out / f"{movie}_t{t:04d}_dic.tif", f.channels["dic"])
        names.append(f"{movie}_t{t:04d}_mcy.tif")
    return names


def trace_polygon(mask: np.ndarray) -> list[int]:
    """(H, W) bool mask → flat integer polygon around its largest outer contour (may be < 3 points)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    best = max(contours, key=lambda c: (cv2.contourArea(c), len(c))).reshape(-1, 2).astype(int)
    # contour points are boundary pixel indices; moving those right of / below the centre by one
    # puts the vertices on the pixels' outer corners, so the outline covers the boundary pixels
    best = best + (best > best.mean(axis=0))
    return best.ravel().tolist()


def polygon_truth(polygons: list[list[int]], height: int, width: int) -> tuple[np.ndarray, list[int]]:
    """Ground truth of written polygons: (H, W) int32 labels and, per label, its polygon index."""
    masks, idx = [], []
    for i, poly in enumerate(polygons):
        m = polygons_to_mask([poly], height, width) if len(poly) >= 6 else np.zeros((height, width), bool)
        if m.any():
            masks.append(m)
            idx.append(i)
    masks, _ = resolve_overlaps(masks)
    keep = [k for k, m in enumerate(masks) if m.any()]
    return masks_to_labels([masks[k] for k in keep], (height, width)), [idx[k] for k in keep]


def write_via(
    out: str | Path,
    *,
    seed: int = 0,
    n_movies: int = 2,
    n_frames: int = 3,
    height: int = 192,
    width: int = 192,
    n_nuclei: int = 15,
    stacked: bool = True,
    phases: tuple[str, ...] | str = DEFAULT_PHASES,
    phase_key: str = "phase",
    mixed_spellings: bool = False,
    style: str | Realism = "clean",
) -> GroundTruth:
    """Write PCNA/DIC movies and a VIA2 project JSON (``via_project.json``) into ``out``.

    Regions are polygons with ``region_attributes[phase_key]`` = the phase name (or, with
    ``mixed_spellings``, variants such as "G1", "g2", "mitosis"). Returns the ground truth:
    one image per frame, key ``"<movie>_<t:04d>"``, labels = rasterised written polygons.
    ``style``: "clean" (default), "realistic" (PCNA preset of the acquisition simulator, one
    style per movie) or a ``Realism``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    phases = PhaseSet.coerce(phases).names
    rng = np.random.default_rng(seed)
    gt = GroundTruth(format="pcna_via", class_names=list(phases))
    metadata: dict[str, dict] = {}
    n_region = 0
    movies = _make_movies(
        rng, n_movies, n_frames, height, width, n_nuclei, phases, realism=resolve(style, "pcna")
    )
    for movie, frames in movies:
        names = _write_channels(out, movie, frames, stacked)
        for t, frame in enumerate(frames):
            ids = sorted(frame.phases)
            polys = [trace_polygon(frame.labels == i) for i in ids]
            regions = []
            for i, poly in zip(ids, polys):
                phase = frame.phases[i]
                label = _SPELLINGS[phase][n_region % len(_SPELLINGS[phase])] if mixed_spellings else phase
                n_region += 1
                shape = {"name": "polygon", "all_points_x": poly[0::2], "all_points_y": poly[1::2]}
                regions.append({"shape_attributes": shape, "region_attributes": {phase_key: label}})
            fname = f"{movie}-{t:04d}.png" if stacked else names[t]
            metadata[f"{fname}-1"] = {
                "filename": fname,
                "size": -1,
                "regions": regions,
                "file_attributes": {},
            }
            labels, kept = polygon_truth(polys, height, width)
            classes = {k + 1: frame.phases[ids[j]] for k, j in enumerate(kept)}
            gt.images.append(GroundTruthImage(f"{movie}_{t:04d}", labels, classes, movie))
    project = {
        "_via_settings": {
            "ui": {"annotation_editor_height": 25, "leftsidebar_width": 18},
            "core": {"buffer_size": 18, "filepath": {}, "default_filepath": ""},
            "project": {"name": "pcna_synthetic"},
        },
        "_via_img_metadata": metadata,
        "_via_attributes": {
            "region": {
                phase_key: {
                    "type": "dropdown",
                    "description": "cell-cycle phase",
                    "options": {p: p for p in phases},
                    "default_options": {},
                }
            },
            "file": {},
        },
        "_via_data_format_version": "2.0.10",
        "_via_image_id_list": list(metadata),
    }
    write_json_atomic(out / "via_project.json", project)
    return gt


def write_masks(
    out: str | Path,
    *,
    seed: int = 0,
    n_movies: int = 2,
    n_frames: int = 3,
    height: int = 192,
    width: int = 192,
    n_nuclei: int = 15,
    stacked: bool = True,
    phases: tuple[str, ...] | str = DEFAULT_PHASES,
    csv_key: str | None = "movie",
    style: str | Realism = "clean",
) -> GroundTruth:
    """Write PCNA/DIC movies, uint16 label masks (``*_mask.tif``) and ``phases.csv`` into ``out``.

    ``csv_key``: extra CSV column identifying the movie, "movie" (movie id), "file" (mask
    file name) or None (no column; only valid with one movie). The ground truth is exactly the
    generator's labels. Keys ``"<movie>_<t:04d>"``. ``style`` as in :func:`write_via`.
    """
    if csv_key not in ("movie", "file", None):
        raise ValueError(f"csv_key must be 'movie', 'file' or None, got {csv_key!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    phases = PhaseSet.coerce(phases).names
    rng = np.random.default_rng(seed)
    gt = GroundTruth(format="pcna_masks", class_names=list(phases))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(([csv_key] if csv_key else []) + ["frame", "label", "phase"])
    movies = _make_movies(
        rng, n_movies, n_frames, height, width, n_nuclei, phases, realism=resolve(style, "pcna")
    )
    for movie, frames in movies:
        _write_channels(out, movie, frames, stacked)
        if stacked:
            write_image(out / f"{movie}_mask.tif", np.stack([f.labels for f in frames]).astype(np.uint16))
        for t, frame in enumerate(frames):
            mask_name = f"{movie}_mask.tif" if stacked else f"{movie}_t{t:04d}_mask.tif"
            if not stacked:
                write_image(out / mask_name, frame.labels.astype(np.uint16))
            key = {"movie": [movie], "file": [mask_name], None: []}[csv_key]
            for lab in sorted(frame.phases):
                writer.writerow(key + [t, lab, frame.phases[lab]])
            labels = frame.labels.astype(np.int32)
            gt.images.append(GroundTruthImage(f"{movie}_{t:04d}", labels, dict(frame.phases), movie))
    write_text_atomic(out / "phases.csv", buf.getvalue())
    return gt
