"""Pass 2 of the tiler: keep multi-class tiles and split them by well into train/val files.

Reads a complete pass-1 tile file (:mod:`pcna_seg.unet.tiling`) once, sequentially, and writes
``<stem>_train.h5`` / ``<stem>_val.h5`` with the same layout plus the attrs ``split``,
``source_file``, ``val_groups`` and ``split_seed``, and the job that made them (the pass-1
file's fingerprint and the split settings): a complete pair of the same job is reused, one of
another job is refused unless ``overwrite``. Outputs are written at hidden temporary names and
renamed only when both are complete, so a failed run leaves the earlier pair as it was.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from pcna_seg.data.splits import TRAIN, VAL
from pcna_seg.errors import ConfigError, DataError
from pcna_seg.unet.tile_jobs import check_reuse, job_fingerprint, split_job, write_job
from pcna_seg.unet.tiling import ARRAYS, TilingSettings, append_tiles, create_tile_datasets
from pcna_seg.utils_io import atomic_path, file_stats, fingerprint, remove_leftovers

logger = logging.getLogger(__name__)


def _strings(ds: h5py.Dataset) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ds[:]]


def choose_val_groups(tiles_per_group: dict[str, int], val_fraction: float, seed: int) -> list[str]:
    """Seeded choice of validation groups (wells): shuffled, taken until ``val_fraction`` of the
    tiles is reached; at least one and at most all-but-one group. [] when val_fraction is 0."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"UNET.TILING.VAL_FRACTION must be in [0, 1), got {val_fraction}")
    names = sorted(tiles_per_group)
    if val_fraction == 0 or not names:
        return []
    if len(names) < 2:
        raise DataError(
            f"Only one well/group ({names[0]}) holds usable tiles; a split by well needs two "
            "(or set UNET.TILING.VAL_FRACTION 0)"
        )
    target = val_fraction * sum(tiles_per_group.values())
    val: list[str] = []
    n_val = 0
    for i in np.random.default_rng(seed).permutation(len(names)):
        if val and (n_val >= target or len(val) >= len(names) - 1):
            break
        val.append(names[i])
        n_val += tiles_per_group[names[i]]
    return sorted(val)


def split_outputs(tiles_h5: str | os.PathLike, val_fraction: float) -> dict[str, Path]:
    """``tiles.h5`` → {"train": tiles_train.h5, "val": tiles_val.h5} (no "val" for fraction 0)."""
    src = Path(tiles_h5)
    names = [TRAIN, VAL] if val_fraction > 0 else [TRAIN]
    return {n: src.with_name(f"{src.stem}_{n}{src.suffix}") for n in names}


def check_split_outputs(
    tiles_h5: Path,
    source_fp: str,
    val_fraction: float,
    seed: int,
    multiclass_only: bool,
    overwrite: bool = False,
    log: bool = True,
) -> bool:
    """True when every pass-2 output exists, complete, from this job; raises for another job's.

    ``source_fp`` is the pass-1 file's job fingerprint (known before pass 1 runs).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"UNET.TILING.VAL_FRACTION must be in [0, 1), got {val_fraction}")
    job = split_job(source_fp, val_fraction, seed, multiclass_only)
    outs = split_outputs(tiles_h5, val_fraction)
    reuse = [check_reuse(p, job, overwrite, f"{name} tile file", log) for name, p in outs.items()]
    return all(reuse)


def _source_fingerprint(src: h5py.File, path: Path) -> str:
    return job_fingerprint(src) or fingerprint(file_stats([path]))  # files of older versions


def split_training(
    tiles_h5: str | os.PathLike,
    val_fraction: float = 0.1,
    seed: int = 0,
    multiclass_only: bool = True,
    block_chunks: int = 8,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Pass 2: copy tiles with more than one class into ``<stem>_train.h5`` / ``<stem>_val.h5``.

    The split is by the ``groups`` of the source frames (wells), seeded; tile order is kept.
    The source is read once, sequentially, ``block_chunks`` chunks at a time. Each output has
    the pass-1 layout plus attrs ``split``, ``source_file``, ``val_groups``, ``split_seed``.
    Returns {"train": path, "val": path} (no "val" when ``val_fraction`` is 0). Existing
    outputs: see the module docstring.
    """
    src_path = Path(tiles_h5)
    remove_leftovers(src_path.parent)
    with h5py.File(src_path, "r") as src:
        if not src.attrs.get("complete", False):
            raise DataError(f"Tile file {src_path} is incomplete (attr complete is not True)")
        source_fp = _source_fingerprint(src, src_path)
        if check_split_outputs(src_path, source_fp, val_fraction, seed, multiclass_only, overwrite):
            return split_outputs(src_path, val_fraction)
        job = split_job(source_fp, val_fraction, seed, multiclass_only)
        counts, source = src["class_counts"][:], src["source"][:]
        groups = np.asarray(_strings(src["groups"]), dtype=object)
        keep = (counts > 0).sum(axis=1) >= 2 if multiclass_only else np.ones(len(counts), bool)
        tile_group = groups[source[:, 0]] if len(source) else np.zeros(0, object)
        per_group = {g: int(np.sum(keep & (tile_group == g))) for g in sorted(set(groups))}
        per_group = {g: n for g, n in per_group.items() if n > 0}
        if not per_group:
            raise DataError(f"No tiles with more than one class in {src_path}")
        val_groups = choose_val_groups(per_group, val_fraction, seed)
        is_val = np.isin(tile_group, val_groups)
        select = {TRAIN: np.flatnonzero(keep & ~is_val)}
        if val_groups:
            select[VAL] = np.flatnonzero(keep & is_val)
        outs = split_outputs(src_path, val_fraction)
        assert set(outs) == set(select)
        s = _settings_from_attrs(src.attrs)
        with _atomic_h5(outs) as files:
            for name, f in files.items():
                f.attrs.update({k: v for k, v in src.attrs.items()})
                f.attrs.update(split=name, source_file=str(src_path.resolve()), split_seed=seed)
                f.attrs["val_groups"] = val_groups
                write_job(f, job)
                f.create_dataset("frames", data=_strings(src["frames"]), dtype=h5py.string_dtype())
                f.create_dataset("groups", data=list(groups), dtype=h5py.string_dtype())
                create_tile_datasets(f, s, src["data"].shape[1])
            step = src["data"].chunks[0] * block_chunks
            n_total = src["data"].shape[0]
            for a in tqdm(range(0, n_total, step), desc="extract", unit="block", disable=not progress):
                b = min(a + step, n_total)
                rows = {name: idx[(idx >= a) & (idx < b)] - a for name, idx in select.items()}
                if not any(r.size for r in rows.values()):
                    continue
                block = {name: src[name][a:b] for name in ARRAYS}
                for name, r in rows.items():
                    if r.size:
                        append_tiles(files[name], {k: v[r] for k, v in block.items()})
            for name, f in files.items():
                f.attrs.update(complete=True, n_tiles=f["data"].shape[0])
                logger.info("%s: %d tiles (%s)", outs[name], f["data"].shape[0], name)
    return outs


def _settings_from_attrs(attrs: Any) -> TilingSettings:
    def lst(v: Any) -> list:
        return [x.decode() if isinstance(x, bytes) else x for x in v]

    return TilingSettings(
        tile=int(attrs["tile"]),
        stride=int(attrs["stride"]),
        channels=tuple(lst(attrs["channels"])),
        classes=tuple(lst(attrs["classes"])),
        mode=str(attrs["mode"]),
        normalization=str(attrs["normalization"]),
        percentiles=tuple(float(v) for v in attrs["percentiles"]),  # type: ignore[arg-type]
        boundary_width=int(attrs["boundary_width"]),
        chunk_tiles=int(attrs["chunk_tiles"]),
        compression=str(attrs["compression"]),
        data_compression=str(attrs.get("data_compression", attrs["compression"])),
    )


class _atomic_h5:
    """Open several HDF5 outputs at temporary names; rename all only if the block succeeds."""

    def __init__(self, outs: dict[str, Path]) -> None:
        self.outs = outs
        self.ctx = {k: atomic_path(p) for k, p in outs.items()}
        self.files: dict[str, h5py.File] = {}

    def __enter__(self) -> dict[str, h5py.File]:
        for k, c in self.ctx.items():
            tmp = c.__enter__()
            self.files[k] = h5py.File(tmp, "w")
        return self.files

    def __exit__(self, *exc: Any) -> None:
        for f in self.files.values():
            f.close()
        for c in self.ctx.values():
            c.__exit__(*exc)


def _split_attrs(path: str) -> tuple[str, str, list[str]]:
    """(split, source_file, val_groups) attributes of a tile file; "" / [] when absent."""
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            groups = [str(g) for g in np.atleast_1d(a.get("val_groups", []))]
            return str(a.get("split", "")), str(a.get("source_file", "")), groups
    except OSError:
        return "", "", []  # unreadable: H5TileDataset names the file


def check_split_files(train: str, val: str) -> None:
    """ConfigError when training would see validation wells.

    The files ``tools/tile_h5.py`` writes say which split they are (attrs ``split``,
    ``source_file``, ``val_groups``): TRAIN_H5 must not be the validation file, the all-tiles
    file (when a VAL_H5 is given) or the same file as VAL_H5, and both must come from one split.
    """
    if val and Path(train).resolve() == Path(val).resolve():
        raise ConfigError(
            f"UNET.DATA.TRAIN_H5 and UNET.DATA.VAL_H5 are the same file ({train}); "
            "validation would be on training tiles"
        )
    t_split, t_src, t_groups = _split_attrs(train)
    if t_split == VAL:
        raise ConfigError(f"UNET.DATA.TRAIN_H5 {train} is a validation split; use the *_train.h5 file")
    if not val:
        return
    v_split, v_src, v_groups = _split_attrs(val)
    if not t_split and v_split:
        raise ConfigError(
            f"UNET.DATA.TRAIN_H5 {train} holds every tile, the validation wells of {val} included; "
            "train on the *_train.h5 file tools/tile_h5.py wrote"
        )
    if v_split == TRAIN or (t_split and not v_split):
        raise ConfigError(f"UNET.DATA.VAL_H5 {val} is not a validation split; use the *_val.h5 file")
    if t_split and v_split and (t_src != v_src or sorted(t_groups) != sorted(v_groups)):
        raise ConfigError(
            f"UNET.DATA.TRAIN_H5 {train} and UNET.DATA.VAL_H5 {val} come from different splits "
            f"(sources {t_src} / {v_src}); use the pair one tools/tile_h5.py run wrote"
        )
