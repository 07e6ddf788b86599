"""Cell Tracking Challenge (2D) → prepared dataset.

Layout read (``src`` is a dataset folder, or a folder holding several dataset folders)::

    <dataset>/01/t000.tif (or t0000.tif)           raw frames, (H, W)
    <dataset>/01_GT/SEG/man_seg000.tif              gold instance labels, often a subset of frames
    <dataset>/01_GT/TRA/man_track000.tif            track markers (optional) + man_track.txt
    <dataset>/01_ST/SEG/man_seg000.tif              silver truth (used with use_silver_truth=True)

Only frames with a SEG label image become records; with ``use_silver_truth`` a frame without
gold SEG takes its silver SEG. Each sequence folder is a sequence ``<dataset>_01``; images are
``<dataset>_01_t000`` (the raw file's own digits) and are copied to ``OUT/images`` in their
dtype. One class, ``nucleus``. When TRA markers exist, each instance gets ``track_id`` (the
marker it overlaps most) and tracked cells that the SEG image leaves unlabelled are counted in
the card (CTC gold SEG is sometimes incomplete: such cells would be taught as background).
``man_track.txt`` goes to ``OUT/tracks.json`` ({sequence: {id: {"begin", "end", "parent"}}}).
Only 2D datasets are supported: 3D stacks and per-slice names (``man_seg_012_034.tif``) raise
DataError. A SEG image with no foreground is kept as a blank image and counted in the card.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from pcna_seg.data.coco_io import CardBuilder
from pcna_seg.data.converters.base import (
    CLASS_NAMES,
    Record,
    as_image,
    check_labels,
    finish,
    label_annotations,
    parallel_map,
    prepared_folder,
)
from pcna_seg.data.image_io import read_image, write_image
from pcna_seg.data.structures import labels_to_masks, make_annotation
from pcna_seg.errors import DataError
from pcna_seg.utils_io import write_json_atomic

logger = logging.getLogger(__name__)
#: frames converted at once (thread pool)
WORKERS = 2

_SEQ_RE = re.compile(r"^\d{2}$")
_RAW_RE = re.compile(r"^t(\d{3,4})\.tiff?$")
_SEG_RE = re.compile(r"^man_seg(\d{3,4})\.tiff?$")
_SEG_SLICE_RE = re.compile(r"^man_seg_?\d+_\d+\.tiff?$")
_TRA_RE = re.compile(r"^man_track(\d{3,4})\.tiff?$")


def _frames(folder: Path, pattern: re.Pattern[str]) -> dict[int, Path]:
    """Frame number → file for the files of ``folder`` matching ``pattern`` ({} if no folder)."""
    out: dict[int, Path] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        if _SEG_SLICE_RE.match(p.name):
            raise DataError(
                f"{p} is a slice annotation of a 3D volume; only 2D Cell Tracking Challenge datasets "
                "are supported"
            )
        m = pattern.match(p.name)
        if m:
            t = int(m.group(1))
            if t in out:
                raise DataError(f"{folder} holds two files for frame {t}: {out[t].name} and {p.name}")
            out[t] = p
    return out


def find_datasets(src: str | Path) -> list[Path]:
    """Dataset folders under ``src``: ``src`` itself when it holds ``NN`` sequence folders,
    else its sub-folders that do. DataError when there is none."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"Cell Tracking Challenge folder not found: {src}")

    def is_dataset(d: Path) -> bool:
        return any(c.is_dir() and _SEQ_RE.match(c.name) for c in d.iterdir())

    if is_dataset(src):
        return [src]
    found = sorted(d for d in src.iterdir() if d.is_dir() and is_dataset(d))
    if not found:
        raise DataError(f"{src} holds no Cell Tracking Challenge sequence folders (01, 02, ...)")
    return found


def _read_2d(path: Path) -> np.ndarray:
    arr = read_image(path)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise DataError(
            f"{path} has shape {arr.shape} (a 3D stack); only 2D Cell Tracking Challenge datasets "
            "are supported"
        )
    return arr


def read_man_track(path: Path) -> dict[str, dict[str, int]]:
    """Parse ``man_track.txt`` ("L B E P" per line) → {str(L): {"begin", "end", "parent"}}."""
    tracks: dict[str, dict[str, int]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            lab, begin, end, parent = (int(v) for v in parts)
        except ValueError:
            raise DataError(f"{path} line {n}: expected four integers 'L B E P', got {line!r}") from None
        tracks[str(lab)] = {"begin": begin, "end": end, "parent": parent}
    return tracks


def _annotations_with_tracks(labels: np.ndarray, markers: np.ndarray) -> tuple[list[dict], int]:
    """Annotations with ``track_id`` = the marker id overlapping each instance most, and the
    number of marker ids that no instance touches (tracked cells missing from SEG)."""
    ids, masks = labels_to_masks(labels)
    anns = []
    for m in masks:
        under = markers[m]
        under = under[under > 0]
        extra = {"track_id": int(np.bincount(under).argmax())} if under.size else {}
        anns.append(make_annotation(m, 0, **extra))
    missed = np.setdiff1d(np.unique(markers[(markers > 0) & (labels == 0)]), np.unique(markers[labels > 0]))
    return anns, int(missed.size)


def _jobs(ds: Path, use_silver_truth: bool) -> tuple[list[dict[str, Any]], dict[str, dict]]:
    """One job per annotated frame of every sequence of dataset folder ``ds``, and the tracks."""
    jobs: list[dict[str, Any]] = []
    tracks: dict[str, dict] = {}
    for seq_dir in sorted(d for d in ds.iterdir() if d.is_dir() and _SEQ_RE.match(d.name)):
        seq = f"{ds.name}_{seq_dir.name}"
        raw = _frames(seq_dir, _RAW_RE)
        gold = _frames(ds / f"{seq_dir.name}_GT" / "SEG", _SEG_RE)
        silver = _frames(ds / f"{seq_dir.name}_ST" / "SEG", _SEG_RE) if use_silver_truth else {}
        markers = _frames(ds / f"{seq_dir.name}_GT" / "TRA", _TRA_RE)
        man_track = ds / f"{seq_dir.name}_GT" / "TRA" / "man_track.txt"
        if man_track.is_file():
            tracks[seq] = read_man_track(man_track)
        segs = {t: (p, "gold") for t, p in gold.items()}
        segs.update({t: (p, "silver") for t, p in silver.items() if t not in gold})
        if not segs:
            logger.warning("%s has no SEG label images; skipped", seq_dir)
            continue
        for t, (seg_path, truth) in sorted(segs.items()):
            if t not in raw:
                raise DataError(f"{seg_path} has no matching raw frame in {seq_dir} (expected t{t:03d}.tif)")
            raw_path = raw[t]
            jobs.append(
                {
                    "image_id": f"{seq}_{raw_path.stem}",
                    "sequence": seq,
                    "frame": t,
                    "raw": raw_path,
                    "seg": seg_path,
                    "tra": markers.get(t),
                    "truth": truth,
                }
            )
    return jobs, tracks


@prepared_folder
def convert(
    src: str | Path,
    out: str | Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
    use_silver_truth: bool = False,
) -> dict[str, Any]:
    """Convert a 2D Cell Tracking Challenge dataset (or a folder of them) into ``out``.

    Images: (H, W) in their stored dtype (uint8/uint16). Labels: SEG (H, W) integer images.
    Returns the dataset card. See the module docstring for the layout and the rules.
    """
    src, out = Path(src), Path(out)
    jobs: list[dict[str, Any]] = []
    tracks: dict[str, dict] = {}
    datasets = find_datasets(src)
    for ds in datasets:
        ds_jobs, ds_tracks = _jobs(ds, use_silver_truth)
        jobs.extend(ds_jobs)
        tracks.update(ds_tracks)
    if not jobs:
        hint = "" if use_silver_truth else " (set use_silver_truth=True to use NN_ST/SEG)"
        raise DataError(f"No SEG label images (NN_GT/SEG/man_seg*.tif) found under {src}{hint}")

    def one(job: dict[str, Any]) -> tuple[Record, np.ndarray, int]:
        img = as_image(_read_2d(job["raw"]), str(job["raw"]))
        labels = check_labels(_read_2d(job["seg"]), str(job["seg"]))
        if labels.shape != img.shape:
            raise DataError(
                f"{job['seg']} has size {labels.shape} but raw frame {job['raw']} has {img.shape}"
            )
        missed = 0
        if job["tra"] is not None:
            markers = check_labels(_read_2d(job["tra"]), str(job["tra"]))
            if markers.shape != img.shape:
                raise DataError(f"{job['tra']} has size {markers.shape} but {job['raw']} has {img.shape}")
            anns, missed = _annotations_with_tracks(labels, markers)
        else:
            anns = label_annotations(labels)
        file_name = out / "images" / f"{job['image_id']}.tif"
        write_image(file_name, img)
        h, w = img.shape
        rec: Record = {"file_name": str(file_name), "height": int(h), "width": int(w)}
        rec.update(image_id=job["image_id"], sequence=job["sequence"], frame=job["frame"], annotations=anns)
        return rec, img, missed

    card = CardBuilder(datasets[0].name if len(datasets) == 1 else src.name, CLASS_NAMES, "ctc")
    records: list[Record] = []
    n_missed = n_incomplete = n_blank = 0
    for rec, img, missed in parallel_map(one, jobs, WORKERS, progress, "ctc", threads=True):
        card.add(rec, img)
        records.append(rec)
        n_missed += missed
        n_incomplete += missed > 0
        n_blank += not rec["annotations"]
    n_silver = sum(j["truth"] == "silver" for j in jobs)
    card.note(f"{len(jobs) - n_silver} frame(s) from gold SEG, {n_silver} from silver SEG")
    if n_blank:
        card.note(f"{n_blank} SEG image(s) without foreground kept as blank images")
    if n_missed:
        msg = (
            f"{n_missed} tracked cell(s) in {n_incomplete} frame(s) have a TRA marker but no SEG label "
            "(incomplete annotation: they are treated as background)"
        )
        logger.warning("%s", msg)
        card.note(msg)
    if tracks:
        write_json_atomic(out / "tracks.json", tracks, indent=1)
    logger.info("ctc: %d annotated frames → %s", len(records), out)
    return finish(out, records, CLASS_NAMES, card, val_fraction, seed)
