"""In-house PCNA movies (stage 3: phases G1/G2, S, M, optional E) → prepared COCO folder.

Images (under ``src``, searched recursively): a PCNA channel matching ``pcna_pattern``
(default ``*mcy*.tif*``, mCherry-PCNA) and a DIC channel whose file name is the PCNA name with
``pcna_tag`` ("mcy") replaced by ``dic_tag`` ("dic"). Either layout works, also mixed:

- stacked: ``<movie>_mcy.tif`` of shape (T, H, W) → frames t = 0..T-1 of movie ``<movie>``;
- per frame: ``<movie>_t0001_mcy.tif`` of shape (H, W) → movie and frame parsed from the
  name without its channel tag by ``frame_regex`` (default: ``<movie>_t<n>``, ``<movie>-t<n>``
  or ``<movie>-<n>``), t = n - ``frame_base``; a name without a frame number is frame 0.

Each movie is one ``sequence`` (splits never share a movie). Each frame becomes one record,
``image_id`` ``"<movie>_<t:04d>"``, with its channels copied as (H, W) TIFFs (dtype kept) to
``out/images/<image_id>_pcna.tif`` / ``_dic.tif``; ``channels = {"pcna", "dic"}`` and
``file_name`` is the PCNA copy. A missing DIC file is an error unless ``require_dic=False``.

Annotations: VIA2 polygons (``convert_via``, "pcna_via", see
:mod:`pcna_seg.data.converters.pcna_via`) or ``convert_masks`` ("pcna_masks"): label TIFFs
named like the PCNA file with ``mask_tag`` ("mask") for ``pcna_tag`` — (H, W) or (T, H, W)
integers, 0 = background — plus one phase CSV (``phase_csv``, default the single ``*.csv`` in
``src``) with header ``frame,label,phase`` and ``movie`` or ``file`` when several movies share
it; ``frame`` is the number as in file names (t + ``frame_base``). Every mask frame becomes a
record; empty ones are kept as blank images. Phase labels are normalised by
:class:`pcna_seg.data.phases.PhaseSet`; the phase list, in order, becomes the COCO categories.
Checks that need no pixels (files, shapes, annotations) run before anything is written.
"""

from __future__ import annotations

import csv
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from pcna_seg.data.coco_io import CardBuilder
from pcna_seg.data.converters.base import Record, dataset_name, finish, parallel_map, prepared_folder
from pcna_seg.data.image_io import TIFF_SUFFIXES, check_pixels, read_image, write_image
from pcna_seg.data.phases import DEFAULT_PHASES, PhaseSet
from pcna_seg.data.structures import labels_to_masks, make_annotation
from pcna_seg.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DEFAULT_FRAME_REGEX = r"^(?P<movie>.+?)(?:[_-]t|-)(?P<frame>\d+)$"
_IMAGE_SUFFIXES = (".tiff", ".tif", ".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class FrameSource:
    """Where one frame's pixels live: (H, W) files, or page ``index`` of (T, H, W) stacks."""

    movie: str
    t: int
    pcna: Path
    dic: Path | None
    index: int | None  # None: per-frame 2-D file
    shape: tuple[int, int]
    mask: Path | None = None

    @property
    def image_id(self) -> str:
        return f"{self.movie}_{self.t:04d}"


@dataclass
class Layout:
    """All frames found under ``src``: ``frames[(movie, t)]`` plus name look-ups."""

    frames: dict[tuple[str, int], FrameSource]
    by_name: dict[str, FrameSource]  # per-frame file name or tag-less stem → frame
    movie_of_file: dict[str, str]  # any channel/mask file name → movie

    def movies(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for movie, t in sorted(self.frames):
            out.setdefault(movie, []).append(t)
        return out


def file_stem(name: str) -> str:
    low = name.lower()
    for sfx in _IMAGE_SUFFIXES:
        if low.endswith(sfx):
            return name[: -len(sfx)]
    return Path(name).stem


def strip_tag(stem: str, tag: str) -> str:
    """``stem`` without the last ``tag`` and one separator next to it ("a_t01_mcy" → "a_t01")."""
    i = stem.lower().rfind(tag.lower())
    if i < 0 or not tag:
        return stem
    j = i + len(tag)
    if i > 0 and stem[i - 1] in "_-.":
        i -= 1
    elif j < len(stem) and stem[j] in "_-.":
        j += 1
    return stem[:i] + stem[j:]


def _swap_tag(path: Path, tag: str, new: str) -> Path:
    i = path.name.rfind(tag)
    return path.with_name(path.name[:i] + new + path.name[i + len(tag) :])


def _image_shape(path: Path) -> tuple[int, ...]:
    """Shape of an image file from its header (TIFF) or pixels, singleton axes dropped."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            with tifffile.TiffFile(path) as tf:
                shape = tuple(tf.series[0].shape)
        except Exception as exc:  # tifffile raises many types for corrupt files
            raise DataError(f"Cannot read TIFF {path}: {exc}") from None
    else:
        shape = read_image(path).shape
    shape = tuple(s for s in shape if s != 1)
    if len(shape) not in (2, 3):
        raise DataError(f"{path} has shape {shape}; expected (H, W) or a (T, H, W) stack")
    return shape


def read_frame(path: Path, index: int | None) -> np.ndarray:
    """(H, W) pixels of a 2-D image file, or of page ``index`` of a (T, H, W) TIFF stack."""
    if index is None:
        arr = read_image(path)
    else:
        try:
            with tifffile.TiffFile(path) as tf:
                series = tf.series[0]
                if len(series.pages) > index and len(series.pages) > 1:
                    arr = tf.asarray(key=index, series=0)
                else:
                    arr = np.squeeze(series.asarray())[index]
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"Cannot read frame {index} of TIFF {path}: {exc}") from None
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim != 2:
        raise DataError(f"Frame {index or 0} of {path} has shape {arr.shape}; expected a 2-D image")
    return arr


def discover(
    src: Path,
    *,
    pcna_pattern: str = "*mcy*.tif*",
    pcna_tag: str = "mcy",
    dic_tag: str = "dic",
    mask_tag: str | None = None,
    require_dic: bool = True,
    frame_regex: str = DEFAULT_FRAME_REGEX,
    frame_base: int = 0,
    exclude: Path | None = None,
) -> Layout:
    """Find every PCNA frame under ``src`` with its DIC (and mask, when ``mask_tag``) file.

    Reads headers only. DataError for no images, a missing DIC/mask file, shape mismatches
    between channels/masks, or two files claiming the same movie frame.
    """
    try:
        regex = re.compile(frame_regex)
    except re.error as exc:
        raise ConfigError(f"frame_regex {frame_regex!r} is not a valid regular expression: {exc}") from None
    if not {"movie", "frame"} <= set(regex.groupindex):
        raise ConfigError(f"frame_regex {frame_regex!r} needs named groups 'movie' and 'frame'")
    skip = exclude.resolve() if exclude is not None else None
    files = sorted(
        p
        for p in src.rglob(pcna_pattern)
        if p.is_file() and (skip is None or skip not in p.resolve().parents)
    )
    if not files:
        raise DataError(f"No PCNA images matching {pcna_pattern!r} under {src}")
    layout = Layout({}, {}, {})
    for pcna in files:
        if pcna_tag not in pcna.name:
            raise DataError(f"PCNA file {pcna} does not contain the channel tag {pcna_tag!r} (pcna_tag)")
        shape = _image_shape(pcna)
        dic: Path | None = _swap_tag(pcna, pcna_tag, dic_tag)
        if not dic.is_file():
            if require_dic:
                raise DataError(
                    f"DIC file not found: {dic} (expected beside {pcna.name}; "
                    "require_dic=False converts the PCNA channel only)"
                )
            dic = None
        elif _image_shape(dic) != shape:
            raise DataError(f"DIC file {dic} has shape {_image_shape(dic)} but PCNA file {pcna} has {shape}")
        mask = None
        if mask_tag is not None:
            mask = _swap_tag(pcna, pcna_tag, mask_tag)
            if not mask.is_file():
                raise DataError(f"Mask file not found: {mask} (expected for PCNA file {pcna.name})")
            if _image_shape(mask) != shape:
                raise DataError(f"Mask {mask} has shape {_image_shape(mask)} but image {pcna} has {shape}")
        key = strip_tag(file_stem(pcna.name), pcna_tag)
        if len(shape) == 3:
            movie, entries = key, [(t, t) for t in range(shape[0])]
        else:
            m = regex.match(key)
            movie, t0 = (m["movie"], int(m["frame"]) - frame_base) if m else (key, 0)
            if t0 < 0:
                raise DataError(f"Frame number of {pcna} is below frame_base={frame_base}")
            entries = [(t0, None)]
        for t, index in entries:
            fs = FrameSource(movie, t, pcna, dic, index, (int(shape[-2]), int(shape[-1])), mask)
            if (movie, t) in layout.frames:
                other = layout.frames[(movie, t)].pcna
                raise DataError(f"{pcna} and {other} both hold frame {t} of movie {movie!r}")
            layout.frames[(movie, t)] = fs
            if index is None:
                layout.by_name[pcna.name] = fs
                layout.by_name[key] = fs
        for p in (pcna, dic, mask):
            if p is not None:
                layout.movie_of_file[p.name] = movie
        layout.movie_of_file.setdefault(movie, movie)
    return layout


def find_one(src: Path, given: str | Path | None, pattern: str, what: str) -> Path:
    """``given`` (absolute, or relative to cwd or ``src``), else the single ``pattern`` match in ``src``."""
    if given is not None:
        path = Path(given)
        path = path if path.is_absolute() or path.exists() else src / path
        if not path.is_file():
            raise DataError(f"{what} not found: {path}")
        return path
    found = sorted(src.glob(pattern))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise DataError(f"Expected exactly one {what} ({pattern}) in {src}, found {names}; pass its path")
    return found[0]


def check_default_phase(phases: PhaseSet, default_phase: str | None) -> str | None:
    """``default_phase`` as a configured name (None stays None); ConfigError when unknown."""
    if default_phase is None:
        return None
    name = phases.try_normalize(default_phase)
    if name is None:
        raise ConfigError(f"default_phase {default_phase!r} is not one of the phases: {phases.allowed()}")
    return name


class ConversionJob:
    """One PCNA conversion: the frames under ``src``, the phases, the output folder, the card
    (thread-safe) and the channel copies. ``discover_options`` go to :func:`discover`."""

    def __init__(
        self,
        src: str | Path,
        out: str | Path,
        fmt: str,
        phases: Iterable[str],
        default_phase: str | None = None,
        name: str | None = None,
        **discover_options: Any,
    ) -> None:
        self.src, self.out = Path(src), Path(out)
        if not self.src.is_dir():
            raise DataError(f"Source folder not found: {self.src}")
        self.phases = PhaseSet.coerce(phases)
        self.default_phase = check_default_phase(self.phases, default_phase)
        self.layout = discover(self.src, exclude=self.out, **discover_options)
        self.images = self.out / "images"
        self.card = CardBuilder(name or dataset_name(self.out), list(self.phases.names), fmt)
        self.lock = threading.Lock()

    def base_record(self, fs: FrameSource) -> tuple[Record, np.ndarray]:
        """Read, check and copy both channels of ``fs``; the record without annotations."""
        pcna = read_frame(fs.pcna, fs.index)
        check_pixels(pcna, fs.pcna)
        channels = {"pcna": str(write_image(self.images / f"{fs.image_id}_pcna.tif", pcna).resolve())}
        if fs.dic is not None:
            dic = read_frame(fs.dic, fs.index)
            check_pixels(dic, fs.dic)
            if dic.shape != pcna.shape:
                raise DataError(
                    f"DIC file {fs.dic} frame has shape {dic.shape} but {fs.pcna} has {pcna.shape}"
                )
            channels["dic"] = str(write_image(self.images / f"{fs.image_id}_dic.tif", dic).resolve())
        rec: Record = {
            "file_name": channels["pcna"],
            "height": int(pcna.shape[0]),
            "width": int(pcna.shape[1]),
            "image_id": fs.image_id,
            "sequence": fs.movie,
            "frame": int(fs.t),
            "channels": channels,
            "annotations": [],
        }
        return rec, pcna

    def add(self, rec: Record, pixels: np.ndarray) -> None:
        with self.lock:
            self.card.add(rec, pixels)

    def run(
        self,
        items: list[Any],
        work: Callable[[Any], tuple[Record, dict[str, Any]]],
        progress: bool,
        workers: int,
        desc: str,
    ) -> tuple[list[Record], list[dict[str, Any]]]:
        """Apply ``work`` to every item in a thread pool; (records, stats) sorted by movie, frame."""
        results = parallel_map(work, items, max(1, int(workers)), progress, desc, threads=True)
        results.sort(key=lambda r: (r[0]["sequence"], r[0]["frame"]))
        return [r for r, _ in results], [st for _, st in results]

    def finish(self, records: list[Record], val_fraction: float, seed: int) -> dict[str, Any]:
        """Write the prepared folder (classes = the phase list, in order); return the card."""
        return finish(self.out, records, list(self.phases.names), self.card, val_fraction, seed)


def convert_via(src: str | Path, out: str | Path, **options: Any) -> dict[str, Any]:
    """PCNA movies + VIA2 JSON → prepared folder; see :func:`.pcna_via.convert_via` for options."""
    from pcna_seg.data.converters.pcna_via import convert_via as _convert_via

    return _convert_via(src, out, **options)


def read_phase_csv(
    path: Path, phases: PhaseSet, layout: Layout, frame_base: int = 0
) -> dict[tuple[str, int], dict[int, tuple[int, int]]]:
    """Phase CSV → ``{(movie, t): {label: (category_id, line)}}``.

    Header ``frame,label,phase`` (case-insensitive) plus ``movie`` or ``file`` when ``src``
    holds several movies. Rows naming an unknown movie/file are logged and ignored.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"Cannot read phase CSV {path}: {exc}") from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    missing = [c for c in ("frame", "label", "phase") if c not in header]
    if missing:
        raise DataError(
            f"Phase CSV {path} lacks column(s) {', '.join(missing)}; header: frame,label,phase[,movie]"
        )
    col = {c: header.index(c) for c in ("frame", "label", "phase", "movie", "file") if c in header}
    movies = layout.movies()
    if "movie" not in col and "file" not in col and len(movies) > 1:
        raise DataError(
            f"Phase CSV {path} has no 'movie' or 'file' column but src holds {len(movies)} movies"
        )
    table: dict[tuple[str, int], dict[int, tuple[int, int]]] = {}
    unknown = 0
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise DataError(f"Phase CSV {path} line {line} has {len(row)} fields, expected {len(header)}")
        try:
            frame, label = int(row[col["frame"]]), int(row[col["label"]])
        except ValueError:
            raise DataError(f"Phase CSV {path} line {line}: 'frame' and 'label' must be integers") from None
        if "movie" in col:
            movie = row[col["movie"]].strip()
        elif "file" in col:
            fname = row[col["file"]].strip().replace("\\", "/").rsplit("/", 1)[-1]
            movie = layout.movie_of_file.get(fname, "")
        else:
            movie = next(iter(movies))
        if movie not in movies:
            unknown += 1
            continue
        cid = phases.index(row[col["phase"]].strip(), f"{path} line {line}")
        slot = table.setdefault((movie, frame - frame_base), {})
        if label in slot and slot[label][0] != cid:
            raise DataError(f"Phase CSV {path} line {line} gives label {label} of frame {frame} a 2nd phase")
        slot[label] = (cid, line)
    if unknown:
        logger.warning("Phase CSV %s: %d row(s) name a movie/file not under src; ignored", path, unknown)
    return table


@prepared_folder
def convert_masks(
    src: str | Path,
    out: str | Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
    phase_csv: str | Path | None = None,
    mask_tag: str = "mask",
    phases: Iterable[str] = DEFAULT_PHASES,
    default_phase: str | None = None,
    pcna_pattern: str = "*mcy*.tif*",
    pcna_tag: str = "mcy",
    dic_tag: str = "dic",
    require_dic: bool = True,
    frame_regex: str = DEFAULT_FRAME_REGEX,
    frame_base: int = 0,
    workers: int = 2,
    name: str | None = None,
) -> dict[str, Any]:
    """PCNA movies + label-mask TIFFs + a phase CSV → prepared COCO folder; returns the card.

    Every label of every mask frame needs a CSV row (else DataError naming the CSV, frame and
    label) unless ``default_phase`` is given; rows whose label is absent from the mask are
    logged and noted in the card. Annotations carry the mask ``label`` (e.g. a track id).
    """
    job = ConversionJob(
        src, out, "pcna_masks", phases, default_phase, name,
        pcna_pattern=pcna_pattern, pcna_tag=pcna_tag, dic_tag=dic_tag, mask_tag=mask_tag,
        require_dic=require_dic, frame_regex=frame_regex, frame_base=frame_base,
    )  # fmt: skip
    pset, default, layout, card = job.phases, job.default_phase, job.layout, job.card
    csv_path = find_one(job.src, phase_csv, "*.csv", "phase CSV")
    table = read_phase_csv(csv_path, pset, layout, frame_base)

    def work(fs: FrameSource) -> tuple[Record, dict[str, Any]]:
        assert fs.mask is not None
        rec, pixels = job.base_record(fs)
        labels = read_frame(fs.mask, fs.index)
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"Mask {fs.mask} holds {labels.dtype} pixels; expected integer labels")
        if labels.shape != pixels.shape:
            raise DataError(f"Mask {fs.mask} has shape {labels.shape} but image {fs.pcna} has {pixels.shape}")
        if labels.min() < 0:
            raise DataError(f"Mask {fs.mask} holds negative labels")
        rows = table.get((fs.movie, fs.t), {})
        ids, masks = labels_to_masks(labels)
        anns = []
        for lab, m in zip(ids.tolist(), masks):
            if lab in rows:
                cid = rows[lab][0]
            elif default is not None:
                cid = pset.names.index(default)
            else:
                raise DataError(
                    f"Phase CSV {csv_path} has no row for frame {fs.t + frame_base}, label {lab} "
                    f"(movie {fs.movie!r}, mask {fs.mask.name})"
                )
            anns.append(make_annotation(m, cid, label=int(lab)))
        rec["annotations"] = anns
        job.add(rec, pixels)
        extra = sorted(set(rows) - set(ids.tolist()))
        return rec, {"extra": [(fs.movie, fs.t + frame_base, lab) for lab in extra], "mask": fs.mask}

    frames = [layout.frames[k] for k in sorted(layout.frames)]
    records, stats = job.run(frames, work, progress, workers, "pcna_masks")
    extra = [e for s in stats for e in s["extra"]]
    rows_for_missing_frames = [k for k in table if k not in layout.frames]
    n_extra = len(extra) + sum(len(table[k]) for k in rows_for_missing_frames)
    if n_extra:
        first = extra[0] if extra else rows_for_missing_frames[0]
        logger.warning(
            "Phase CSV %s: %d row(s) name labels absent from the masks (first: %s)", csv_path, n_extra, first
        )
        card.note(f"{n_extra} phase CSV row(s) name labels absent from their mask frame and were ignored")
    n_blank = sum(1 for r in records if not r["annotations"])
    if n_blank:
        card.note(f"{n_blank} frame(s) with empty masks kept as blank images")
    n_objects = Counter()
    for rec, st in zip(records, stats):
        n_objects[str(st["mask"])] += len(rec["annotations"])
    empty_files = sorted(p for p, n in n_objects.items() if n == 0)
    if empty_files:
        logger.warning(
            "Mask file(s) with no foreground at all (kept as blank frames): %s", ", ".join(empty_files)
        )
        card.note(f"{len(empty_files)} mask file(s) have no foreground at all")
    return job.finish(records, val_fraction, seed)
