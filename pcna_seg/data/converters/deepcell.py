"""DeepCell nuclear data → prepared dataset: ``.npz`` frame stacks and tracked ``.trks`` movies.

``deepcell_npz`` (:func:`convert_npz`): a ``.npz`` file (or a folder of them) holding ``X``
(N, H, W, C) intensities (float or integer, channels last) and ``y`` (N, H, W, 1) integer
instance labels, 0 = background; (N, H, W) is accepted for either. One channel of ``X`` is kept
(``channel``) and written as ``images/<stem>_<index:05d>.tif`` in its own dtype (float →
float32). DeepCell's nuclear frames come from tracked movies (the seed's 2610 frames are 87
movies × 30 frames), but the npz does not say where a movie ends. Pass ``frames_per_movie``
(consecutive frames form ``<stem>_m<k>``) or ``movie_key`` (an array of N movie ids) so the
train/val split is by movie; without either, records carry no ``sequence``, the split is by
single frame and a loud warning goes to the log and the dataset card, because correlated frames
of one movie then sit in both train and val and validation scores come out optimistic.

``deepcell_trks`` (:func:`convert_trks`): a ``.trks`` tar (``raw.npy`` (B, T, H, W, C),
``tracked.npy`` (B, T, H, W, 1) with ids constant over time, ``lineages.json`` list of B dicts)
or a ``.trk`` tar (one movie: (T, H, W, C), ``lineage.json``), or a folder of them. Each movie
is one sequence ``<stem>_b<batch>``; images are ``<stem>_b<batch>_t<frame:03d>``; every
annotation carries ``track_id`` (the label id) and ``OUT/tracks.json`` keeps the lineages.
All-zero frames (DeepCell pads shorter movies with zeros) are skipped and counted.

Blank label images are kept as images without annotations (useful negatives).
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import zipfile
from collections.abc import Iterable
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
    parallel_map,
    prepared_folder,
    record_from_labels,
)
from pcna_seg.data.image_io import write_image
from pcna_seg.errors import ConfigError, DataError
from pcna_seg.utils_io import write_json_atomic

logger = logging.getLogger(__name__)
#: frames converted at once (thread pool; reading and PNG/TIFF writing release the GIL)
WORKERS = 2

LEAK_WARNING = (
    "{src}: frames are split one by one because neither frames_per_movie nor movie_key was given; "
    "DeepCell frames come from tracked movies (e.g. 87 movies x 30 frames), so correlated frames of "
    "one movie land in both train and val and validation scores are optimistic - pass "
    "frames_per_movie=30 (or movie_key) for a leak-free split by movie"
)


# ------------------------------------------------------------------------------------------ helpers
def list_inputs(src: str | Path, suffixes: Iterable[str], what: str) -> list[Path]:
    """``src`` itself when it is a file, else its files with one of ``suffixes`` (sorted)."""
    src = Path(src)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise DataError(f"{what} input not found: {src}")
    files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in set(suffixes))
    if not files:
        raise DataError(f"No {'/'.join(suffixes)} files in {src}")
    return files


def _channels_last(arr: np.ndarray, name: str, source: Path, ndim: int) -> np.ndarray:
    """Add a trailing channel axis to a ``ndim - 1``-D array; DataError for other ranks."""
    if arr.ndim == ndim - 1:
        return arr[..., None]
    if arr.ndim != ndim:
        raise DataError(f"{name} in {source} has shape {arr.shape}; expected {ndim - 1} or {ndim} axes")
    return arr


def _check_channel(channel: int, n: int, option: str, what: str) -> None:
    if not 0 <= channel < n:
        raise ConfigError(f"{option}={channel} is out of range: {what} has {n} channel(s)")


# -------------------------------------------------------------------------------------------- npz
def _load_npz(path: Path, keys: list[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise DataError(
                    f"{path} has no array {missing[0]!r}; it holds {sorted(data.files)} (set x_key/y_key)"
                )
            return {k: data[k] for k in keys}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"Cannot read npz file {path}: {exc}") from None


def _movie_ids(
    path: Path, n: int, frames_per_movie: int | None, movies: np.ndarray | None
) -> tuple[list[str] | None, list[int]]:
    """(sequence per frame or None, frame index within its movie) for the N frames of ``path``."""
    if movies is not None:
        movies = np.asarray(movies).reshape(-1)
        if movies.shape[0] != n:
            raise DataError(f"Movie index array in {path} has {movies.shape[0]} entries for {n} frames")
        seqs = [f"{path.stem}_m{m}" for m in movies.tolist()]
    elif frames_per_movie is not None:
        if int(frames_per_movie) < 1 or n % int(frames_per_movie):
            raise ConfigError(
                f"frames_per_movie={frames_per_movie} does not divide the {n} frames of {path} "
                "into whole movies"
            )
        seqs = [f"{path.stem}_m{i // int(frames_per_movie)}" for i in range(n)]
    else:
        return None, list(range(n))
    seen: dict[str, int] = {}
    frames = []
    for s in seqs:
        frames.append(seen.get(s, 0))
        seen[s] = frames[-1] + 1
    return seqs, frames


@prepared_folder
def convert_npz(
    src: str | Path,
    out: str | Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
    channel: int = 0,
    y_channel: int = 0,
    frames_per_movie: int | None = None,
    movie_key: str | None = None,
    x_key: str = "X",
    y_key: str = "y",
) -> dict[str, Any]:
    """Convert a DeepCell ``.npz`` (or a folder of them) into the prepared-dataset folder ``out``.

    ``X`` (N, H, W, C) → channel ``channel`` written as (H, W) TIFF in the data's dtype (float →
    float32); ``y`` (N, H, W, Cy) → label channel ``y_channel``. ``frames_per_movie`` (consecutive
    frames) or ``movie_key`` (array of N movie ids; wins over ``frames_per_movie``) give movies
    for a leak-free split (see the module docstring). Returns the dataset card.
    """
    src, out = Path(src), Path(out)
    files = list_inputs(src, [".npz"], "DeepCell npz")
    card = CardBuilder(src.stem, CLASS_NAMES, "deepcell_npz")
    records: list[Record] = []
    leak = False
    for path in files:
        keys = [x_key, y_key] + ([movie_key] if movie_key else [])
        arrays = _load_npz(path, keys)
        x = _channels_last(arrays[x_key], x_key, path, 4)
        y = _channels_last(arrays[y_key], y_key, path, 4)
        if x.shape[:3] != y.shape[:3]:
            raise DataError(
                f"{path}: {x_key} has shape {x.shape} but {y_key} has shape {y.shape}; "
                "frame count, height and width must match"
            )
        _check_channel(channel, x.shape[3], "channel", f"{x_key} in {path}")
        _check_channel(y_channel, y.shape[3], "y_channel", f"{y_key} in {path}")
        movies = arrays.get(movie_key) if movie_key else None
        seqs, frames = _movie_ids(path, x.shape[0], frames_per_movie, movies)
        leak = leak or seqs is None

        def one(i: int, path: Path = path, x: np.ndarray = x, y: np.ndarray = y, seqs=seqs, frames=frames):
            image_id = f"{path.stem}_{i:05d}"
            img = as_image(x[i, :, :, channel], f"{path} [{x_key}][{i}]")
            labels = check_labels(y[i, :, :, y_channel], f"{path} [{y_key}][{i}]")
            file_name = out / "images" / f"{image_id}.tif"
            write_image(file_name, img)
            extra = {"sequence": seqs[i]} if seqs is not None else {}
            return record_from_labels(str(file_name), image_id, labels, frame=frames[i], **extra), img

        items = list(range(x.shape[0]))
        for rec, img in parallel_map(one, items, WORKERS, progress, f"deepcell {path.name}", threads=True):
            card.add(rec, img)
            records.append(rec)
    if leak:
        msg = LEAK_WARNING.format(src=src)
        logger.warning("%s", msg)
        card.note("WARNING: " + msg)
    else:
        card.note(f"split by movie ({len(card.sequences)} movies)")
    logger.info("deepcell_npz: %d frames from %d file(s) → %s", len(records), len(files), out)
    return finish(out, records, CLASS_NAMES, card, val_fraction, seed)


# ------------------------------------------------------------------------------------------- trks
def _member_bytes(tar: tarfile.TarFile, path: Path, names: tuple[str, ...]) -> bytes | None:
    """Bytes of the first of ``names`` present in ``tar`` (None when none is)."""
    members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
    for name in names:
        if name in members:
            fh = tar.extractfile(members[name])
            if fh is None:
                raise DataError(f"Cannot read {name} in {path}")
            return fh.read()
    return None


def read_trks(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[dict[int, dict]]]:
    """Read a ``.trks`` / ``.trk`` archive → (raw, tracked, lineages).

    ``raw``: (B, T, H, W, C) as stored; ``tracked``: (B, T, H, W, 1) as stored; a single movie
    gets B = 1. ``lineages``: one dict per batch, track id (int) → lineage entry ({} when the
    archive has no lineage file). DataError names the file for corrupt or incomplete archives.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Tracked DeepCell file not found: {path}")
    try:
        with tarfile.open(path, "r") as tar:
            blobs = {
                "raw": _member_bytes(tar, path, ("raw.npy",)),
                "tracked": _member_bytes(tar, path, ("tracked.npy",)),
                "lineage": _member_bytes(tar, path, ("lineages.json", "lineage.json")),
            }
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"Cannot read tar archive {path}: {exc}") from None
    arrays = {}
    for key in ("raw", "tracked"):
        if blobs[key] is None:
            raise DataError(
                f"{path} has no {key}.npy member; a .trks/.trk archive needs raw.npy and tracked.npy"
            )
        try:
            arrays[key] = np.load(io.BytesIO(blobs[key]), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"Cannot read {key}.npy in {path}: {exc}") from None
    raw = arrays["raw"]
    if raw.ndim not in (3, 4, 5):
        raise DataError(f"raw.npy in {path} has shape {raw.shape}; expected (B, T, H, W, C) or (T, H, W, C)")
    if raw.ndim == 3:
        raw = raw[..., None]
    if raw.ndim == 4:
        raw = raw[None]
    tracked = arrays["tracked"]
    tracked = tracked[None] if tracked.ndim in (3, 4) and arrays["raw"].ndim in (3, 4) else tracked
    tracked = _channels_last(tracked, "tracked.npy", path, 5)
    if tracked.shape[:4] != raw.shape[:4]:
        raise DataError(
            f"{path}: raw.npy has shape {raw.shape} but tracked.npy has shape {tracked.shape}; "
            "batches, frames, height and width must match"
        )
    lineages: list[dict[int, dict]] = []
    if blobs["lineage"] is not None:
        try:
            obj = json.loads(blobs["lineage"].decode("utf-8"))
            obj = obj if isinstance(obj, list) else [obj]
            lineages = [{int(k): v for k, v in d.items()} for d in obj]
        except (ValueError, AttributeError, UnicodeDecodeError) as exc:
            raise DataError(f"Malformed lineage JSON in {path}: {exc}") from None
        if len(lineages) != raw.shape[0]:
            raise DataError(f"{path} has {len(lineages)} lineage entries for {raw.shape[0]} movies")
    else:
        lineages = [{} for _ in range(raw.shape[0])]
    return raw, tracked, lineages


@prepared_folder
def convert_trks(
    src: str | Path,
    out: str | Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
    channel: int = 0,
    skip_padding: bool = True,
) -> dict[str, Any]:
    """Convert DeepCell ``.trks`` / ``.trk`` archives (a file or a folder) into ``out``.

    Each movie becomes sequence ``<stem>_b<batch>``; annotations carry ``track_id``;
    ``out/tracks.json`` maps sequence → track id → lineage entry. With ``skip_padding``,
    frames whose raw and labels are all zero are dropped. Returns the dataset card.
    """
    src, out = Path(src), Path(out)
    files = list_inputs(src, [".trks", ".trk"], "DeepCell tracked")
    card = CardBuilder(src.stem, CLASS_NAMES, "deepcell_trks")
    records: list[Record] = []
    tracks: dict[str, dict[str, Any]] = {}
    n_pad = n_unlisted = 0
    for path in files:
        raw, tracked, lineages = read_trks(path)
        _check_channel(channel, raw.shape[4], "channel", f"raw.npy in {path}")

        def one(bt: tuple[int, int], path: Path = path, raw: np.ndarray = raw, tracked: np.ndarray = tracked):
            b, t = bt
            source = f"{path} [tracked.npy][batch {b}, frame {t}]"
            img = as_image(raw[b, t, :, :, channel], f"{path} [raw.npy][batch {b}, frame {t}]")
            labels = check_labels(tracked[b, t, :, :, 0], source)
            if skip_padding and not labels.any() and not img.any():
                return None
            image_id = f"{path.stem}_b{b}_t{t:03d}"
            file_name = out / "images" / f"{image_id}.tif"
            write_image(file_name, img)
            seq = f"{path.stem}_b{b}"
            rec = record_from_labels(str(file_name), image_id, labels, track_ids=True, sequence=seq, frame=t)
            return b, rec, img

        items = [(b, t) for b in range(raw.shape[0]) for t in range(raw.shape[1])]
        for res in parallel_map(one, items, WORKERS, progress, f"deepcell {path.name}", threads=True):
            if res is None:
                n_pad += 1
                continue
            b, rec, img = res
            card.add(rec, img)
            records.append(rec)
            seq_tracks = tracks.setdefault(rec["sequence"], {str(k): v for k, v in lineages[b].items()})
            for ann in rec["annotations"]:
                tid = ann["track_id"]
                if tid not in lineages[b]:  # not in the lineage file: keep the frames seen
                    n_unlisted += str(tid) not in seq_tracks
                    seq_tracks.setdefault(str(tid), {"label": tid, "frames": []})["frames"].append(
                        rec["frame"]
                    )
    if n_pad:
        card.note(f"{n_pad} all-zero padding frame(s) skipped")
        logger.info("skipped %d all-zero padding frame(s)", n_pad)
    if n_unlisted:
        card.note(f"{n_unlisted} track(s) in tracked.npy missing from the lineage file")
        logger.warning("%d track(s) in tracked.npy are missing from the lineage file", n_unlisted)
    write_json_atomic(out / "tracks.json", tracks, indent=1)
    logger.info("deepcell_trks: %d frames from %d file(s) → %s", len(records), len(files), out)
    return finish(out, records, CLASS_NAMES, card, val_fraction, seed)
