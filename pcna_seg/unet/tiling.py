"""Tile stitched live/dead frames into HDF5 (pass 1) and extract train/val files (pass 2).

Input layout (as written by :mod:`pcna_seg.data.synthetic.write_livedead`)::

    <frames>/images/<well>_t<k>.tif                (C, H, W) uint16, channels in UNET.CHANNELS order
    <frames>/labels/<well>_t<k>_semantic.tif       (H, W) uint8 0 bg / 1 DAPI (live) / 2 Cy5 (dead)
    <frames>/labels/<well>_t<k>_instances.tif      (H, W) int32 instance ids, 0 = background

The well (text before ``_t<k>``) is the frame's group: train/val never share a group.

Tiles are TILE × TILE at STRIDE. Border rule ``"shift"``: the last tile of every row and column
is shifted inwards to end exactly at the frame edge, so there is no padding and every pixel
is covered (the last tile overlaps its neighbour by more than TILE - STRIDE).

Pass 1 writes every tile to ``<out>`` (schema in the README / unet_spec). Frames are tiled by a
process pool whose workers return tile arrays; the single writer appends them in frame order
into ``<out stem>.partial.h5`` and records ``frames_done`` / ``n_tiles`` after each frame's
tiles are flushed. A killed run resumes there: datasets are truncated to ``n_tiles`` and done
frames are skipped. On completion ``complete=True`` is set and the file is renamed to ``<out>``
(replacing an earlier file only then). Each file records the job that made it
(:mod:`pcna_seg.unet.tile_jobs`): a rerun reuses a complete file of the same job and refuses
one of another job, naming what changed, unless ``overwrite``. Pass 2
(:func:`~pcna_seg.unet.tile_split.split_training`) keeps tiles holding more than one class and
writes ``<stem>_train.h5`` / ``<stem>_val.h5`` split by well (seeded).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
from tqdm import tqdm

from pcna_seg.data.image_io import check_pixels, read_image
from pcna_seg.data.intensity import percentile_normalize
from pcna_seg.data.tiles import tile_starts
from pcna_seg.errors import ConfigError, DataError
from pcna_seg.unet.targets import MODE_CLASSES, MODE_LABEL_KIND, check_label_values, check_mode, make_targets
from pcna_seg.unet.tile_jobs import (
    check_reuse,
    explain_change,
    job_fingerprint,
    read_job,
    tiff_shape,
    tiling_job,
    write_job,
)
from pcna_seg.utils_io import fingerprint, remove_leftovers

logger = logging.getLogger(__name__)

TILES_VERSION = 1
ARRAYS = ("data", "labels", "class_counts", "source")
COMPRESSIONS = ("none", "lz4", "blosc_lz4", "zstd", "gzip")
NORMALIZATIONS = ("percentile", "minmax", "none")
_FRAME_RE = re.compile(r"^(?P<group>.+)_t(?P<t>\d+)$")
_TIFF = (".tif", ".tiff")


@dataclass(frozen=True)
class TilingSettings:
    """Everything that determines the tile file's content (recorded in its attrs)."""

    tile: int = 160
    stride: int = 80
    channels: tuple[str, ...] = ("hoechst", "draq7")
    classes: tuple[str, ...] = ("background", "DAPI", "Cy5")
    mode: str = "livedead"
    normalization: str = "percentile"
    percentiles: tuple[float, float] = (1.0, 99.8)
    boundary_width: int = 2
    chunk_tiles: int = 64
    compression: str = "lz4"
    data_compression: str = "none"

    def validate(self) -> None:
        check_mode(self.mode)
        if len(self.classes) != len(MODE_CLASSES[self.mode]):
            raise ConfigError(
                f"UNET.CLASSES has {len(self.classes)} names but mode {self.mode!r} has "
                f"{len(MODE_CLASSES[self.mode])} classes {MODE_CLASSES[self.mode]}"
            )
        if self.tile < 8 or not 0 < self.stride <= self.tile:
            raise ConfigError(
                f"UNET.TILING needs TILE >= 8 and 0 < STRIDE <= TILE, got {self.tile}, {self.stride}"
            )
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"UNET.TILING.NORMALIZATION must be one of {NORMALIZATIONS}")
        for key, value in (("COMPRESSION", self.compression), ("DATA_COMPRESSION", self.data_compression)):
            if value not in COMPRESSIONS:
                raise ConfigError(f"UNET.TILING.{key} must be one of {COMPRESSIONS}, got {value!r}")
        if self.chunk_tiles < 1:
            raise ConfigError("UNET.TILING.CHUNK_TILES must be >= 1")

    def attrs(self) -> dict[str, Any]:
        """The file attrs describing this configuration (compared on resume and by the loader)."""
        d = asdict(self)
        d["channels"], d["classes"] = list(self.channels), list(self.classes)
        d["percentiles"] = list(self.percentiles)
        d.update(border="shift", pcna_seg_tiles_version=TILES_VERSION)
        return d


def settings_from_cfg(cfg: Any) -> TilingSettings:
    """Build :class:`TilingSettings` from ``cfg.UNET`` (MODE, CLASSES, CHANNELS, TILING.*)."""
    t = cfg.UNET.TILING
    s = TilingSettings(
        tile=int(t.TILE),
        stride=int(t.STRIDE),
        channels=tuple(cfg.UNET.CHANNELS),
        classes=tuple(cfg.UNET.CLASSES),
        mode=str(cfg.UNET.MODE),
        normalization=str(t.NORMALIZATION),
        percentiles=(float(t.PERCENTILES[0]), float(t.PERCENTILES[1])),
        boundary_width=int(t.BOUNDARY_WIDTH),
        chunk_tiles=int(t.CHUNK_TILES),
        compression=str(t.COMPRESSION),
        data_compression=str(t.DATA_COMPRESSION),
    )
    s.validate()
    return s


@dataclass(frozen=True)
class FrameSource:
    """One stitched frame: its image file, the label file for the mode, and its well/group."""

    name: str
    image: str
    labels: str
    group: str


def discover_frames(root: str | os.PathLike, mode: str = "livedead") -> list[FrameSource]:
    """List the frames under ``root`` (layout in the module docstring), sorted by name.

    DataError names the folder when it holds no images, or the label file a frame lacks.
    """
    check_mode(mode)
    root = Path(root)
    img_dir = root / "images"
    images = sorted(p for p in img_dir.glob("*") if p.suffix.lower() in _TIFF) if img_dir.is_dir() else []
    if not images:
        raise DataError(f"No frame TIFFs found in {img_dir} (expected images/<well>_t<k>.tif)")
    kind = MODE_LABEL_KIND[mode]
    out = []
    for img in images:
        lab = root / "labels" / f"{img.stem}_{kind}{img.suffix}"
        if not lab.is_file():
            raise DataError(f"Label file {lab} for frame {img} is missing")
        m = _FRAME_RE.match(img.stem)
        out.append(
            FrameSource(img.stem, str(img.resolve()), str(lab.resolve()), m["group"] if m else img.stem)
        )
    return out


def normalize_frame(image: np.ndarray, method: str, percentiles: Sequence[float] = (1.0, 99.8)) -> np.ndarray:
    """(C, H, W) integer/float image → (C, H, W) float32 scaled per channel to about [0, 1].

    ``percentile``: (x - p_low) / (p_high - p_low), values outside the percentiles are kept
    (not clipped; :func:`~pcna_seg.data.intensity.percentile_normalize` with ``clip=False``);
    ``minmax``: the same with the 0th and 100th percentiles (min and max); ``none``: x / dtype
    max (uint16 → /65535, float kept) so values fit float16. A channel whose two percentiles
    coincide becomes zeros.
    """
    if method not in NORMALIZATIONS:
        raise ConfigError(f"UNET.TILING.NORMALIZATION must be one of {NORMALIZATIONS}, got {method!r}")
    if method == "none":
        x = image.astype(np.float32)
        if np.issubdtype(image.dtype, np.integer):
            x *= np.float32(1.0) / np.float32(np.iinfo(image.dtype).max)
        return x
    low, high = (float(percentiles[0]), float(percentiles[1])) if method == "percentile" else (0.0, 100.0)
    return np.stack([percentile_normalize(c, low, high, clip=False) for c in image])


def preflight(sources: Sequence[FrameSource], s: TilingSettings) -> tuple[int, int]:
    """Check headers of all files before any work: readable and not truncated, shapes agree,
    channels match, tile fits. Returns the common frame size (H, W). DataError names the file.
    """
    if not sources:
        raise DataError("No frames to tile")
    size: tuple[int, int] | None = None
    n_ch = len(s.channels)
    for src in sources:
        shp = tiff_shape(src.image)
        if len(shp) == 2 and n_ch == 1:
            shp = (1, *shp)
        if len(shp) != 3 or shp[0] != n_ch:
            raise DataError(
                f"Frame {src.image} has shape {shp}; expected ({n_ch}, H, W) for channels {s.channels}"
            )
        if size is None:
            size = (shp[1], shp[2])
            if s.tile > min(size):
                raise DataError(f"Tile {s.tile} is larger than frame {src.image} of size {size[0]}x{size[1]}")
        elif shp[1:] != size:
            raise DataError(
                f"Frame {src.image} is {shp[1]}x{shp[2]} but the job's frames are {size[0]}x{size[1]}"
            )
        lab = tiff_shape(src.labels)
        if lab != size:
            raise DataError(f"Label image {src.labels} has shape {lab}; its frame is {size[0]}x{size[1]}")
    assert size is not None
    return size


def read_frame(src: FrameSource, s: TilingSettings) -> tuple[np.ndarray, np.ndarray]:
    """Read one frame: ((C, H, W) raw image, (H, W) uint8 class targets). DataError names the file."""
    image = read_image(src.image)
    check_pixels(image, src.image)
    if image.ndim == 2:
        image = image[None]
    labels = read_image(src.labels)
    if labels.shape != image.shape[1:]:
        raise DataError(f"Label image {src.labels} has shape {labels.shape}; its frame is {image.shape[1:]}")
    check_label_values(labels, s.mode, src.labels)
    return image, make_targets(labels, s.mode, s.boundary_width)


def tile_frame(src: FrameSource, frame_index: int, s: TilingSettings) -> dict[str, np.ndarray]:
    """Tile one frame (runs in a worker). Returns arrays for n tiles, row-major over positions:

    ``data`` (n, C, T, T) float16, ``labels`` (n, T, T) uint8, ``class_counts`` (n, K) int32,
    ``source`` (n, 3) int32 = (frame_index, y, x) of each tile's top-left corner.
    """
    image, target = read_frame(src, s)
    norm = normalize_frame(image, s.normalization, s.percentiles).astype(np.float16)
    t = s.tile
    ys, xs = tile_starts(image.shape[1], t, s.stride), tile_starts(image.shape[2], t, s.stride)
    n = len(ys) * len(xs)
    data = np.empty((n, image.shape[0], t, t), np.float16)
    labels = np.empty((n, t, t), np.uint8)
    source = np.empty((n, 3), np.int32)
    i = 0
    for y in ys:
        for x in xs:
            data[i] = norm[:, y : y + t, x : x + t]
            labels[i] = target[y : y + t, x : x + t]
            source[i] = (frame_index, y, x)
            i += 1
    counts = np.stack([(labels == k).sum(axis=(1, 2)) for k in range(len(s.classes))], axis=1)
    return {"data": data, "labels": labels, "class_counts": counts.astype(np.int32), "source": source}


def compression_kwargs(name: str) -> dict[str, Any]:
    """h5py ``create_dataset`` keyword arguments for a UNET.TILING.COMPRESSION value."""
    if name == "none":
        return {}
    if name == "lz4":
        return dict(hdf5plugin.LZ4())
    if name == "blosc_lz4":
        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    if name == "zstd":
        return dict(hdf5plugin.Zstd(clevel=3))
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 1}
    raise ConfigError(f"UNET.TILING.COMPRESSION must be one of {COMPRESSIONS}, got {name!r}")


def create_tile_datasets(f: h5py.File, s: TilingSettings, n_channels: int) -> None:
    """Create the four empty, resizable tile datasets with chunks of ``chunk_tiles`` tiles.

    ``data`` uses ``data_compression`` (default none: float16 microscopy tiles shrink only ~30%
    with lz4 but cost ~1.7× the read CPU); ``labels`` use ``compression`` (lz4: ~10× smaller).
    """
    t, k, c = s.tile, len(s.classes), s.chunk_tiles
    comp = compression_kwargs(s.compression)
    dshape = (c, n_channels, t, t)
    f.create_dataset(
        "data",
        (0, *dshape[1:]),
        np.float16,
        maxshape=(None, *dshape[1:]),
        chunks=dshape,
        **compression_kwargs(s.data_compression),
    )
    f.create_dataset("labels", (0, t, t), np.uint8, maxshape=(None, t, t), chunks=(c, t, t), **comp)
    f.create_dataset("class_counts", (0, k), np.int32, maxshape=(None, k), chunks=(4096, k))
    f.create_dataset("source", (0, 3), np.int32, maxshape=(None, 3), chunks=(4096, 3))


def append_tiles(f: h5py.File, arrays: dict[str, np.ndarray]) -> int:
    """Append one block of tile arrays to every dataset; returns the new tile count."""
    n0 = f["data"].shape[0]
    n1 = n0 + len(arrays["data"])
    for name in ARRAYS:
        f[name].resize(n1, axis=0)
        f[name][n0:n1] = arrays[name]
    return n1


def _write_header(f: h5py.File, s: TilingSettings, sources: Sequence[FrameSource], job: dict) -> None:
    f.attrs.update(s.attrs())
    write_job(f, job)
    f.attrs.update(complete=False, frames_done=0, n_tiles=0)
    create_tile_datasets(f, s, len(s.channels))
    f.create_dataset("frames", data=[x.image for x in sources], dtype=h5py.string_dtype())
    f.create_dataset("groups", data=[x.group for x in sources], dtype=h5py.string_dtype())


def partial_path(out: str | os.PathLike) -> Path:
    """``tiles.h5`` → ``tiles.partial.h5`` (where an unfinished pass 1 lives)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.partial{out.suffix}")


def job_of(s: TilingSettings, sources: Sequence[FrameSource]) -> dict[str, Any]:
    """The pass-1 job of ``sources`` with ``s`` (settings + size/mtime of every image and label)."""
    return tiling_job(s.attrs(), [p for src in sources for p in (src.image, src.labels)])


def _open_partial(part: Path, s: TilingSettings, sources: Sequence[FrameSource], job: dict) -> h5py.File:
    """Open (resume) or create the partial file; one of another job or unreadable is started over."""
    if part.exists():
        try:
            f = h5py.File(part, "a")
        except OSError:
            logger.warning("Partial file %s is unreadable; starting over", part)
        else:
            if job_fingerprint(f) == fingerprint(job):
                done, n = int(f.attrs["frames_done"]), int(f.attrs["n_tiles"])
                for name in ARRAYS:
                    f[name].resize(n, axis=0)  # drop tiles of a frame whose flush was interrupted
                logger.info("Resuming %s at frame %d/%d (%d tiles kept)", part, done, len(sources), n)
                return f
            reason = explain_change(read_job(f), job)
            f.close()
            logger.warning("Partial file %s is from another job (%s); starting over", part, reason)
        part.unlink()
    f = h5py.File(part, "w")
    _write_header(f, s, sources, job)
    return f


def tile_to_h5(
    sources: Sequence[FrameSource],
    out: str | os.PathLike,
    s: TilingSettings,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    on_frame_done: Callable[[int], None] | None = None,
) -> Path:
    """Pass 1: tile every frame into ``out`` (resumable; see module docstring). Returns ``out``.

    An existing complete ``out`` made by the same job (settings and the size/mtime of every
    input file) is reused; one of another job is refused with the reason
    (:func:`~pcna_seg.unet.tile_jobs.check_reuse`) unless ``overwrite``. A new file
    is built as ``<stem>.partial.h5`` after a header check of every input and replaces ``out``
    only when complete, so a failed job leaves the earlier file as it was. Leftovers of killed
    runs in ``out``'s folder are removed first (logged). ``workers`` processes (spawn) tile
    frames; 0 tiles in this process. ``on_frame_done(k)`` is called after frame k's tiles are
    flushed (tests use it to simulate a kill).
    """
    s.validate()
    out = Path(out)
    job = job_of(s, sources)
    remove_leftovers(out.parent)
    if check_reuse(out, job, overwrite, "Tile file"):
        return out
    preflight(sources, s)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(out)
    f = _open_partial(part, s, sources, job)
    try:
        _run_frames(f, sources, s, workers, progress, on_frame_done)
        f.attrs["complete"] = True
        n = int(f.attrs["n_tiles"])
        f.flush()
    finally:
        f.close()
    os.replace(part, out)  # an earlier file is replaced only now, by a complete one
    logger.info("%s: %d tiles from %d frames", out, n, len(sources))
    return out


def _run_frames(
    f: h5py.File,
    sources: Sequence[FrameSource],
    s: TilingSettings,
    workers: int,
    progress: bool,
    on_frame_done: Callable[[int], None] | None,
) -> None:
    start = int(f.attrs["frames_done"])
    todo = list(range(start, len(sources)))
    bar = tqdm(total=len(sources), initial=start, unit="frame", desc="tiling", disable=not progress)
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) if workers > 0 and todo else None
    pending: dict[int, Future] = {}
    try:
        for pos, k in enumerate(todo):
            if pool is None:
                arrays = tile_frame(sources[k], k, s)
            else:
                for j in todo[pos : pos + 2 * workers]:  # bounded look-ahead keeps memory flat
                    if j not in pending:
                        pending[j] = pool.submit(tile_frame, sources[j], j, s)
                arrays = pending.pop(k).result()
            n = append_tiles(f, arrays)
            f.flush()
            f.attrs["frames_done"], f.attrs["n_tiles"] = k + 1, n
            f.flush()
            bar.update(1)
            bar.set_postfix(tiles=n)
            if on_frame_done is not None:
                on_frame_done(k)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def run_tiling(
    cfg: Any,
    frames: str | os.PathLike,
    out: str | os.PathLike,
    workers: int | None = None,
    split: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Both passes from a config: discover frames, tile into ``out``, extract train/val.

    Returns {"tiles": out, "train": …, "val": …}. Uses UNET.MODE/CLASSES/CHANNELS and
    UNET.TILING.* (WORKERS, VAL_FRACTION, SPLIT_SEED, MULTICLASS_ONLY). Every existing output
    (pass 1 and pass 2) is checked before any work, so a refusal comes first.
    """
    from pcna_seg.unet.tile_split import check_split_outputs, split_training  # pass 2's module

    s = settings_from_cfg(cfg)
    sources = discover_frames(frames, s.mode)
    n_workers = int(cfg.UNET.TILING.WORKERS) if workers is None else int(workers)
    if n_workers < 0:
        raise ConfigError(
            f"--workers (UNET.TILING.WORKERS) must be >= 0 (0 = tile in this process), got {n_workers}"
        )
    t = cfg.UNET.TILING
    split_args = (float(t.VAL_FRACTION), int(t.SPLIT_SEED), bool(t.MULTICLASS_ONLY))
    job = job_of(s, sources)
    check_reuse(out, job, overwrite, "Tile file", log=False)
    if split:
        check_split_outputs(Path(out), fingerprint(job), *split_args, overwrite=overwrite, log=False)
    result = {"tiles": tile_to_h5(sources, out, s, n_workers, overwrite, progress)}
    if split:
        result.update(split_training(result["tiles"], *split_args, overwrite=overwrite, progress=progress))
    return result
