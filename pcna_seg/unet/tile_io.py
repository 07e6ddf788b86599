"""Low-level reading of HDF5 tile files (written by :mod:`pcna_seg.unet.tiling`).

- :func:`read_tile_meta` validates a file (version, completeness, shapes) and returns its attrs;
  :func:`check_expected` / :func:`expected_from_cfg` match them against a config.
- :class:`MappedChunks` gives rows of uncompressed datasets straight from a memory map;
  :class:`DecodedChunks` rows of compressed ones from whole decoded chunks (small LRU).
- :func:`dihedral_into` writes a flipped/rotated tile into a batch buffer with one OpenCV op
  per plane.

:mod:`pcna_seg.unet.dataset` builds the torch Dataset, sampler and loaders on top of these.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import cv2
import h5py
import hdf5plugin  # noqa: F401  (registers the LZ4/Blosc/Zstd filters for reading)
import numpy as np

from pcna_seg.errors import ConfigError, DataError
from pcna_seg.unet.tile_jobs import CONFIG_KEYS
from pcna_seg.unet.tiling import ARRAYS, TILES_VERSION

# attr name in the tile file → config key it must match
EXPECTED_KEYS: dict[str, str] = {
    k: CONFIG_KEYS[k] for k in ("tile", "channels", "classes", "mode", "normalization")
}


def _plain(value: Any) -> Any:
    """h5py attr value → plain Python (str, int, float, list)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_tile_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Open, validate and close a tile file; return its attrs plus ``n`` and ``chunk``.

    DataError names the file when it is missing, not HDF5, truncated, incomplete, of another
    schema version, or when its datasets disagree in length or shape.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Tile file not found: {path} (make it with tools/tile_h5.py)")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
            missing = [name for name in (*ARRAYS, "frames", "groups") if name not in f]
            shapes = {name: f[name].shape for name in ARRAYS if name in f}
            chunk = f["data"].chunks[0] if "data" in f and f["data"].chunks else 1
    except OSError as exc:
        raise DataError(f"Cannot open tile file {path}: truncated or not HDF5 ({exc})") from None
    if attrs.get("pcna_seg_tiles_version") != TILES_VERSION:
        raise DataError(
            f"Tile file {path} has pcna_seg_tiles_version={attrs.get('pcna_seg_tiles_version')!r}; "
            f"expected {TILES_VERSION}"
        )
    if attrs.get("complete") is not True:
        raise DataError(
            f"Tile file {path} is incomplete (attr complete is not True; was tiling interrupted?)"
        )
    if missing:
        raise DataError(f"Tile file {path} lacks the datasets {missing}")
    n = shapes["data"][0]
    t = int(attrs.get("tile", -1))
    if (
        any(shp[0] != n for shp in shapes.values())
        or shapes["data"][1:] != (len(attrs.get("channels", [])), t, t)
        or shapes["labels"][1:] != (t, t)
        or shapes["class_counts"][1:] != (len(attrs.get("classes", [])),)
    ):
        raise DataError(f"Tile file {path} has inconsistent dataset shapes {shapes} for its attrs")
    if n == 0:
        raise DataError(f"Tile file {path} holds no tiles")
    return {**attrs, "n": int(n), "chunk": int(chunk)}


def check_expected(path: str | os.PathLike, meta: dict[str, Any], expected: dict[str, Any]) -> None:
    """ConfigError naming the file, the attribute and both values when the file does not match."""
    for key, want in expected.items():
        got = meta.get(key)
        want_plain = list(want) if isinstance(want, list | tuple) else want
        if got != want_plain:
            cfg_key = EXPECTED_KEYS.get(key, key)
            raise ConfigError(
                f"Tile file {path} was made with {key}={got!r} but the config has {cfg_key}={want_plain!r}; "
                "re-tile with this config or use a matching config"
            )


def expected_from_cfg(cfg: Any) -> dict[str, Any]:
    """The attrs a tile file must have to be used with ``cfg`` (see :data:`EXPECTED_KEYS`)."""
    return {
        "tile": int(cfg.UNET.TILING.TILE),
        "channels": list(cfg.UNET.CHANNELS),
        "classes": list(cfg.UNET.CLASSES),
        "mode": str(cfg.UNET.MODE),
        "normalization": str(cfg.UNET.TILING.NORMALIZATION),
    }


class MappedChunks:
    """Rows of an uncompressed dataset read straight from a memory map of the file.

    HDF5 is asked once for every chunk's byte offset (a contiguous dataset is one chunk); a
    row is then a view of the page cache, copied without library overhead or system calls.
    """

    def __init__(self, mm: np.ndarray, offsets: np.ndarray, chunk: int, row_shape: tuple, dtype: np.dtype):
        self.mm, self.offsets, self.chunk = mm, offsets, chunk
        self.row_shape, self.dtype = row_shape, dtype
        self.views: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, ds: h5py.Dataset, path: str) -> MappedChunks | None:
        """None unless ``ds`` is unfiltered, native dtype, contiguous or chunked along rows only and
        fully allocated."""
        if ds._filters or not ds.dtype.isnative or ds.shape[0] == 0:
            return None
        if ds.chunks is None:
            offset = ds.id.get_offset()
            if offset is None:
                return None
            offsets, chunk = np.array([offset], np.int64), ds.shape[0]
        else:
            chunk = ds.chunks[0]
            n_chunks = -(-ds.shape[0] // chunk)
            if ds.chunks[1:] != ds.shape[1:] or ds.id.get_num_chunks() != n_chunks:
                return None
            offsets = np.empty(n_chunks, np.int64)
            for i in range(n_chunks):
                info = ds.id.get_chunk_info(i)
                if info.byte_offset is None:
                    return None
                offsets[info.chunk_offset[0] // chunk] = info.byte_offset
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        return cls(mm, offsets, chunk, tuple(ds.shape[1:]), ds.dtype)

    def _view(self, c: int) -> np.ndarray:
        v = self.views.get(c)
        if v is None:
            shape = (self.chunk, *self.row_shape)
            v = np.ndarray(shape, self.dtype, buffer=self.mm, offset=int(self.offsets[c]))
            self.views[c] = v
        return v

    def row(self, r: int) -> np.ndarray:
        """Row ``r`` (a read-only view)."""
        c, o = divmod(r, self.chunk)
        return self._view(c)[o]


class DecodedChunks:
    """Rows of a compressed (or otherwise unmappable) dataset: whole chunks of ``chunk`` rows are
    read and decoded once into a small LRU cache of ``capacity`` chunks, rows are views of them.

    The batch sampler pools a few chunks at a time, so each chunk is decoded about once per
    epoch and worker; reading whole chunks skips HDF5's selection and chunk-cache copies.
    """

    def __init__(self, ds: h5py.Dataset, chunk: int, capacity: int) -> None:
        self.ds, self.chunk, self.capacity = ds, max(1, chunk), max(1, capacity)
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def row(self, r: int) -> np.ndarray:
        """Row ``r`` (a view of the decoded chunk)."""
        c, o = divmod(r, self.chunk)
        buf = self.cache.get(c)
        if buf is None:
            a, z = c * self.chunk, min((c + 1) * self.chunk, self.ds.shape[0])
            buf = np.empty((z - a, *self.ds.shape[1:]), self.ds.dtype)
            self.ds.read_direct(buf, np.s_[a:z])
            self.cache[c] = buf
            if len(self.cache) > self.capacity:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(c)
        return buf[o]


# (flip left-right, rot90 count) → one OpenCV op (SIMD; ~4× faster than numpy's strided copies)
_CV_OPS = {
    (False, 1): lambda s, d: cv2.rotate(s, cv2.ROTATE_90_COUNTERCLOCKWISE, dst=d),
    (False, 2): lambda s, d: cv2.rotate(s, cv2.ROTATE_180, dst=d),
    (False, 3): lambda s, d: cv2.rotate(s, cv2.ROTATE_90_CLOCKWISE, dst=d),
    (True, 0): lambda s, d: cv2.flip(s, 1, dst=d),
    (True, 1): lambda s, d: cv2.transpose(s, dst=d),
    (True, 2): lambda s, d: cv2.flip(s, 0, dst=d),
    (True, 3): lambda s, d: cv2.flip(cv2.transpose(s, dst=d), -1, dst=d),
}


def dihedral_into(src: np.ndarray, dst: np.ndarray, flip: bool, k: int) -> None:
    """Write ``src`` (…, H, W) flipped left-right (if ``flip``), then rotated like
    ``np.rot90(·, k, axes=(-2, -1))``, into the C-contiguous ``dst`` (same shape and dtype)."""
    op = _CV_OPS.get((bool(flip), int(k) % 4))
    if op is None:
        dst[...] = src
        return
    if src.dtype == np.float16:  # same bits, a type OpenCV handles
        src, dst = src.view(np.uint16), dst.view(np.uint16)
    h, w = src.shape[-2:]
    for s, d in zip(src.reshape(-1, h, w), dst.reshape(-1, w, h)):
        op(s, d)
