"""What made a tile file, whether a rerun may reuse it, and TIFF headers checked before work.

Every tile file records the job that made it: the dataset ``job`` (JSON text) and the attr
``job_fingerprint`` (:func:`pcna_seg.utils_io.fingerprint` of that JSON). Jobs:

- pass 1 (:mod:`pcna_seg.unet.tiling`): ``{"kind": "tiles", "settings": TilingSettings.attrs(),
  "inputs": file_stats(every image and label file)}`` (path, size, mtime_ns per file);
- pass 2 (:mod:`pcna_seg.unet.tile_split`): ``{"kind": "split", "source": <pass-1 fingerprint>,
  "val_fraction", "seed", "multiclass_only"}``.

:func:`check_reuse` is the one decision for an existing output: a complete file with the same
fingerprint is reused (logged, with or without ``--overwrite``: a rebuild would give the same
file); any other existing file is refused with the reason (which setting or which input file
changed) unless ``--overwrite``, in which case the new file is built beside it and replaces it
only when complete.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import tifffile

from pcna_seg.errors import DataError, OutputExistsError
from pcna_seg.utils_io import file_stats, fingerprint

logger = logging.getLogger(__name__)

JOB_DATASET = "job"
JOB_ATTR = "job_fingerprint"

# job field → config key, so that a refusal says what to look at
CONFIG_KEYS: dict[str, str] = {
    "tile": "UNET.TILING.TILE",
    "stride": "UNET.TILING.STRIDE",
    "channels": "UNET.CHANNELS",
    "classes": "UNET.CLASSES",
    "mode": "UNET.MODE",
    "normalization": "UNET.TILING.NORMALIZATION",
    "percentiles": "UNET.TILING.PERCENTILES",
    "boundary_width": "UNET.TILING.BOUNDARY_WIDTH",
    "chunk_tiles": "UNET.TILING.CHUNK_TILES",
    "compression": "UNET.TILING.COMPRESSION",
    "data_compression": "UNET.TILING.DATA_COMPRESSION",
    "val_fraction": "UNET.TILING.VAL_FRACTION",
    "seed": "UNET.TILING.SPLIT_SEED",
    "multiclass_only": "UNET.TILING.MULTICLASS_ONLY",
}


def tiff_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """Shape of a TIFF's first series, read from its header only.

    DataError names the file when it is missing, unreadable, or truncated (the pages' pixel data
    reach beyond the end of the file, or fewer pages than its ImageJ header announces).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"Frame file not found: {p}")
    size = p.stat().st_size
    try:
        with tifffile.TiffFile(p) as tf:
            shape = tuple(int(v) for v in tf.series[0].shape)
            pages = list(tf.pages)
            end = max(
                (int(o) + int(n) for pg in pages for o, n in zip(pg.dataoffsets, pg.databytecounts)),
                default=0,
            )
            announced = int((tf.imagej_metadata or {}).get("images", 0)) if tf.is_imagej else 0
    except Exception as exc:  # tifffile raises many types (struct.error, TiffFileError, ...)
        raise DataError(f"TIFF {p} is truncated or unreadable ({exc}); re-export or replace it") from None
    if end > size:
        raise DataError(
            f"TIFF {p} is truncated: its pixel data run to byte {end} but the file has only {size} "
            "bytes; re-export or replace it"
        )
    if announced > len(pages):
        raise DataError(
            f"TIFF {p} is truncated: its header announces {announced} images but only {len(pages)} "
            "can be read; re-export or replace it"
        )
    return shape


def tiling_job(settings_attrs: dict[str, Any], files: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """Pass-1 job: the tiling settings and ``[path, size, mtime_ns]`` of every input file."""
    return _plain({"kind": "tiles", "settings": settings_attrs, "inputs": file_stats(files)})


def split_job(source_fp: str, val_fraction: float, seed: int, multiclass_only: bool) -> dict[str, Any]:
    """Pass-2 job: the pass-1 file's fingerprint and the split settings."""
    return {
        "kind": "split",
        "source": str(source_fp),
        "val_fraction": float(val_fraction),
        "seed": int(seed),
        "multiclass_only": bool(multiclass_only),
    }


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def write_job(f: h5py.File, job: dict[str, Any]) -> str:
    """Record ``job`` in an open tile file (dataset + fingerprint attr); returns the fingerprint."""
    fp = fingerprint(job)
    if JOB_DATASET in f:
        del f[JOB_DATASET]
    f.create_dataset(JOB_DATASET, data=json.dumps(job, sort_keys=True), dtype=h5py.string_dtype())
    f.attrs[JOB_ATTR] = fp
    return fp


def read_job(f: h5py.File) -> dict[str, Any] | None:
    """The job recorded in an open tile file, or None (a file of an older version)."""
    if JOB_DATASET not in f:
        return None
    raw = f[JOB_DATASET][()]
    try:
        return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ValueError:
        return None


def job_fingerprint(f: h5py.File) -> str | None:
    """The ``job_fingerprint`` attr of an open tile file (None when absent)."""
    v = f.attrs.get(JOB_ATTR)
    return None if v is None else (v.decode() if isinstance(v, bytes) else str(v))


def _when(ns: int) -> str:
    return _dt.datetime.fromtimestamp(ns / 1e9).isoformat(sep=" ", timespec="milliseconds")


def _changed_inputs(old: list, new: list) -> list[str]:
    a = {str(p): (s, m) for p, s, m in old}
    b = {str(p): (s, m) for p, s, m in new}
    changed = [p for p in b if p in a and a[p] != b[p]]
    out = []
    for p in changed[:2]:
        (s0, m0), (s1, m1) = a[p], b[p]
        what = f"size {s0} -> {s1} bytes" if s0 != s1 else f"modified at {_when(m1)}, recorded {_when(m0)}"
        out.append(f"input {p} changed ({what})")
    if len(changed) > 2:
        out.append(f"{len(changed) - 2} more input files changed")
    for label, names in (
        ("new input file", [p for p in b if p not in a]),
        ("input file gone", [p for p in a if p not in b]),
    ):
        if names:
            more = f" and {len(names) - 1} more" if len(names) > 1 else ""
            out.append(f"{label} {names[0]}{more}")
    return out


def explain_change(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """One phrase saying how the job recorded in a file (``old``) differs from ``new``."""
    if old is None:
        return "it records no job (made by an older version of pcna_seg)"
    parts: list[str] = []
    a_set, b_set = old.get("settings", {}), new.get("settings", {})
    top = {k for k in (*old, *new) if k not in ("settings", "inputs")}
    diffs = [
        (k, a_set.get(k), b_set.get(k)) for k in sorted({*a_set, *b_set}) if a_set.get(k) != b_set.get(k)
    ]
    diffs += [(k, old.get(k), new.get(k)) for k in sorted(top) if old.get(k) != new.get(k)]
    for k, x, y in diffs:
        if k == "source":
            parts.append("it was split from another all-tiles job (other settings or input files)")
        else:
            key = f" ({CONFIG_KEYS[k]})" if k in CONFIG_KEYS else ""
            parts.append(f"setting {k} {x!r} -> {y!r}{key}")
    parts += _changed_inputs(old.get("inputs", []), new.get("inputs", []))
    return "; ".join(parts) or "its job record differs"


def check_reuse(
    path: str | os.PathLike, job: dict[str, Any], overwrite: bool, what: str, log: bool = True
) -> bool:
    """Decide about an existing output ``path`` for ``job``; logs the decision and why.

    True: ``path`` is complete and was made by exactly ``job``: reuse it (also with
    ``overwrite``: rebuilding would give the same file). False: it must be built (missing, or
    another job's with ``overwrite``: build beside it, replace it only when complete; an
    unreadable file counts as another job's). OutputExistsError otherwise, naming the file,
    what changed, and ``--overwrite``.
    """
    path = Path(path)
    if not path.exists():
        if log:
            logger.info("%s does not exist yet; building it", path)
        return False
    want = fingerprint(job)
    try:
        with h5py.File(path, "r") as f:
            complete = bool(f.attrs.get("complete", False))
            same = job_fingerprint(f) == want
            old = None if same else read_job(f)
    except OSError as exc:
        if overwrite:
            if log:
                logger.info("%s is unreadable (%s); --overwrite: building a new one", path, exc)
            return False
        raise OutputExistsError(
            f"{what} {path} exists but is unreadable ({exc}); "
            "pass --overwrite to replace it or choose another output"
        ) from None
    if same and complete:
        if log:
            n = len(job.get("inputs", []))
            made = f"{n} unchanged input files" if n else "the same source file"
            logger.info("%s is complete and was made from the same settings and %s; reusing it", path, made)
        return True
    if overwrite:
        if log:
            reason = "it is incomplete" if same else explain_change(old, job)
            logger.info("%s is from another job (%s); --overwrite: the new file replaces it when complete",
                        path, reason)  # fmt: skip
        return False
    reason = "it is incomplete" if same else explain_change(old, job)
    raise OutputExistsError(
        f"{what} {path} is from another job: {reason}; "
        "pass --overwrite to rebuild it or choose another output"
    )
