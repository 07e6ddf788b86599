"""Read HDF5 tile files (written by :mod:`pcna_seg.unet.tiling`) for U-Net training.

- :class:`H5TileDataset` opens the file lazily in each DataLoader worker (never keeps a handle
  from ``__init__``, so it pickles under spawn) and reads a whole batch in ``__getitems__``:
  uncompressed data straight from a memory map (:class:`MappedChunks`), compressed data with
  one HDF5 read per touched chunk (:func:`read_rows`).
- :class:`ChunkShuffleSampler` yields batches in a chunk-aware random order: chunks are
  shuffled, then ``mix`` chunks at a time are pooled and their tiles shuffled, so a batch
  mixes tiles of several distant chunks (frames, wells) while every chunk is decompressed
  about once per epoch and worker (the HDF5 chunk cache holds the pooled chunks).
- :func:`build_unet_loaders` builds both loaders from ``cfg.UNET.DATA``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the LZ4/Blosc/Zstd filters for reading)
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from pcna_seg.errors import ConfigError, DataError
from pcna_seg.unet.tiling import ARRAYS, TILES_VERSION

logger = logging.getLogger(__name__)

# attr name in the tile file → config key it must match
EXPECTED_KEYS: dict[str, str] = {
    "tile": "UNET.TILING.TILE",
    "channels": "UNET.CHANNELS",
    "classes": "UNET.CLASSES",
    "mode": "UNET.MODE",
    "normalization": "UNET.TILING.NORMALIZATION",
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


def index_runs(sorted_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique indices → (starts, lengths) of their contiguous runs."""
    if sorted_idx.size == 0:
        return sorted_idx, sorted_idx
    breaks = np.flatnonzero(np.diff(sorted_idx) != 1) + 1
    starts = sorted_idx[np.r_[0, breaks]]
    ends = sorted_idx[np.r_[breaks - 1, sorted_idx.size - 1]]
    return starts, ends - starts + 1


def read_rows(ds: h5py.Dataset, rows: np.ndarray, out: np.ndarray, chunk: int) -> None:
    """Read sorted unique ``rows`` of ``ds`` into ``out`` (same order), chunk by chunk.

    Rows of one chunk are read as one contiguous span (then selected) when the span is at
    most max(4 × their number, 128) rows, else run by run: one read of a cached chunk is far
    cheaper than many small ones. (A single union-of-hyperslabs read is ~100× slower in HDF5.)
    """
    pos = 0
    for c in np.unique(rows // chunk).tolist():
        sel = rows[(rows >= c * chunk) & (rows < (c + 1) * chunk)]
        a, z = int(sel[0]), int(sel[-1]) + 1
        if z - a <= max(4 * sel.size, 128):
            if z - a == sel.size:
                ds.read_direct(out, np.s_[a:z], np.s_[pos : pos + sel.size])
            else:
                out[pos : pos + sel.size] = ds[a:z][sel - a]
        else:
            starts, lengths = index_runs(sel)
            for s0, n in zip(starts.tolist(), lengths.tolist()):
                ds.read_direct(out, np.s_[s0 : s0 + n], np.s_[pos : pos + n])
                pos += n
            continue
        pos += sel.size


class MappedChunks:
    """Rows of an uncompressed chunked dataset read straight from a memory map of the file.

    HDF5 is asked once for every chunk's byte offset; rows are then plain page-cache copies,
    without per-read library overhead or read() system calls (the fast path for raw data).
    """

    def __init__(self, mm: np.ndarray, offsets: np.ndarray, chunk: int, row_shape: tuple, dtype: np.dtype):
        self.mm, self.offsets, self.chunk = mm, offsets, chunk
        self.row_shape, self.dtype = row_shape, dtype
        self.views: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, ds: h5py.Dataset, path: str) -> MappedChunks | None:
        """None unless ``ds`` is chunked along rows only, unfiltered, fully allocated, native dtype."""
        chunks = ds.chunks
        if chunks is None or ds._filters or chunks[1:] != ds.shape[1:] or not ds.dtype.isnative:
            return None
        n_chunks = -(-ds.shape[0] // chunks[0])
        if ds.id.get_num_chunks() != n_chunks:
            return None
        offsets = np.empty(n_chunks, np.int64)
        for i in range(n_chunks):
            info = ds.id.get_chunk_info(i)
            if info.byte_offset is None:
                return None
            offsets[info.chunk_offset[0] // chunks[0]] = info.byte_offset
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        return cls(mm, offsets, chunks[0], tuple(ds.shape[1:]), ds.dtype)

    def _view(self, c: int) -> np.ndarray:
        v = self.views.get(c)
        if v is None:
            v = np.ndarray(
                (self.chunk, *self.row_shape), self.dtype, buffer=self.mm, offset=int(self.offsets[c])
            )
            self.views[c] = v
        return v

    def read(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Copy sorted ``rows`` into ``out`` (same order)."""
        pos = 0
        chunk_of = rows // self.chunk
        for c in np.unique(chunk_of).tolist():
            sel = rows[chunk_of == c] - c * self.chunk
            out[pos : pos + sel.size] = self._view(c)[sel]
            pos += sel.size


class H5TileDataset(Dataset):
    """Tiles of one HDF5 tile file: item i = (image (C, T, T) float32 tensor, target (T, T) int64 tensor).

    ``augment``: random dihedral transform (rot90 × flip, same for image and target) and per
    channel intensity jitter ``x · (1 ± contrast) ± brightness``; numpy, seeded per worker from
    torch's worker seed. ``expected``: attrs the file must have (see :func:`expected_from_cfg`).
    ``compact``: items are (float16 image, uint8 target) instead — 4× less worker → main and
    host → GPU traffic; convert on the device (:func:`to_device`). ``cache_chunks``: HDF5
    chunk-cache size in chunks per open file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        augment: bool,
        expected: dict[str, Any] | None = None,
        contrast: float = 0.1,
        brightness: float = 0.05,
        cache_chunks: int = 16,
        compact: bool = False,
    ) -> None:
        self.path = str(path)
        meta = read_tile_meta(path)
        if expected:
            check_expected(path, meta, expected)
        self.meta = meta
        self.n, self.chunk, self.tile = meta["n"], meta["chunk"], int(meta["tile"])
        self.channels, self.classes = list(meta["channels"]), list(meta["classes"])
        self.augment, self.contrast, self.brightness = bool(augment), float(contrast), float(brightness)
        self.cache_chunks, self.compact = int(cache_chunks), bool(compact)
        self._file: h5py.File | None = None
        self._rng: np.random.Generator | None = None
        self._direct: dict[str, MappedChunks | None] = {}

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"], state["_rng"], state["_direct"] = None, None, {}  # each process opens its own
        return state

    def _open(self) -> h5py.File:
        if self._file is None:
            chunk_bytes = self.chunk * len(self.channels) * self.tile * self.tile * 2
            try:
                self._file = h5py.File(
                    self.path,
                    "r",
                    rdcc_nbytes=max(self.cache_chunks * chunk_bytes, 1 << 20),
                    rdcc_nslots=100003,
                    rdcc_w0=0.0,  # plain LRU: keep fully read chunks for the next batches
                )
            except OSError as exc:
                raise DataError(f"Cannot open tile file {self.path}: {exc}") from None
        return self._file

    def _generator(self) -> np.random.Generator:
        if self._rng is None:
            info = torch.utils.data.get_worker_info()
            self._rng = np.random.default_rng(info.seed if info is not None else torch.initial_seed())
        return self._rng

    def close(self) -> None:
        """Close this process's file handle (it is reopened on the next read)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._direct = {}

    def read_batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Raw rows in the given order: ((B, C, T, T) float16, (B, T, T) uint8), no augmentation."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"tile index out of range 0..{self.n - 1}")
        uniq, inverse = np.unique(idx, return_inverse=True)
        f = self._open()
        data = np.empty((uniq.size, len(self.channels), self.tile, self.tile), np.float16)
        labels = np.empty((uniq.size, self.tile, self.tile), np.uint8)
        try:
            for name, out in (("data", data), ("labels", labels)):
                if name not in self._direct:
                    self._direct[name] = MappedChunks.open(f[name], self.path)
                direct = self._direct[name]
                if direct is not None:
                    direct.read(uniq, out)
                else:
                    read_rows(f[name], uniq, out, self.chunk)
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"Cannot read tiles from {self.path}: {exc} (corrupt file?)") from None
        if uniq.size != idx.size or not np.array_equal(uniq, idx):
            data, labels = data[inverse], labels[inverse]
        return data, labels

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        data, labels = self.read_batch(indices)
        b = len(data)
        shared = torch.utils.data.get_worker_info() is not None  # worker: fill shared memory directly
        img_t, tgt_t = (torch.float16, torch.uint8) if self.compact else (torch.float32, torch.int64)
        ti, tt = _new_tensor(data.shape, img_t, shared), _new_tensor(labels.shape, tgt_t, shared)
        images, targets = ti.numpy(), tt.numpy()
        if self.augment:
            rng = self._generator()
            rot, flip = rng.integers(0, 4, size=b), rng.random(b) < 0.5
            for k in range(4):  # the 8 dihedral transforms, each applied to its samples at once
                for fl in (False, True):
                    sel = np.flatnonzero((rot == k) & (flip == fl))
                    if sel.size:
                        img, lab = data[sel], labels[sel]
                        if fl:
                            img, lab = img[..., ::-1], lab[..., ::-1]
                        images[sel] = np.rot90(img, k, axes=(2, 3))
                        targets[sel] = np.rot90(lab, k, axes=(1, 2))
            shape = (b, data.shape[1], 1, 1)
            gain = 1.0 + rng.uniform(-self.contrast, self.contrast, shape)
            offset = rng.uniform(-self.brightness, self.brightness, shape)
            ti.mul_(torch.from_numpy(gain).to(img_t)).add_(torch.from_numpy(offset).to(img_t))
        else:
            images[...] = data
            targets[...] = labels
        return [(ti[i], tt[i]) for i in range(b)]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([int(i)])[0]


def to_device(
    images: torch.Tensor, targets: torch.Tensor, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a batch to ``device`` as float32 images and int64 targets (works for compact batches)."""
    nb = torch.device(device).type == "cuda"
    return (
        images.to(device, non_blocking=nb).float(),
        targets.to(device, non_blocking=nb).long(),
    )


def _new_tensor(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """Uninitialised CPU tensor; in shared memory when ``shared`` (saves the collate copy)."""
    if shared:
        elem = torch.empty(0, dtype=dtype)
        storage = elem._typed_storage()._new_shared(int(np.prod(shape)), device="cpu")
        return elem.new(storage).view(shape)
    return torch.empty(shape, dtype=dtype)


def _batched(parts: list[torch.Tensor]) -> torch.Tensor:
    """Stack tensors; consecutive views of one storage (as ``__getitems__`` makes) cost no copy."""
    first = parts[0]
    n, off, ptr = first.numel(), first.storage_offset(), first.untyped_storage().data_ptr()
    if first.is_contiguous() and all(
        t.shape == first.shape
        and t.is_contiguous()
        and t.storage_offset() == off + i * n
        and t.untyped_storage().data_ptr() == ptr
        for i, t in enumerate(parts)
    ):
        return torch.empty(0, dtype=first.dtype).set_(
            first.untyped_storage(), off, (len(parts), *first.shape)
        )
    return torch.stack(parts)


def collate_tiles(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate (image, target) samples → ((B, C, T, T) float32, (B, T, T) int64) without copying
    when the samples come from one ``__getitems__`` call (else an ordinary stack)."""
    return _batched([b[0] for b in batch]), _batched([b[1] for b in batch])


class ChunkShuffleSampler:
    """Batch sampler (use as ``DataLoader(batch_sampler=…)``) that shuffles in chunk order.

    Per epoch: the chunks (``chunk`` consecutive tiles) are permuted; every ``mix`` consecutive
    chunks of that order are pooled and their tiles shuffled; the stream is cut into batches
    of ``batch_size``. Seeded by (seed, epoch). Each ``__iter__`` uses the current epoch and
    then advances it; :meth:`set_epoch` resumes at an epoch (and optionally a batch within it).
    """

    def __init__(
        self,
        dataset_len: int,
        chunk: int,
        batch_size: int,
        seed: int = 0,
        mix: int = 4,
        drop_last: bool = False,
    ) -> None:
        if dataset_len < 1 or chunk < 1 or batch_size < 1 or mix < 1:
            raise ValueError("dataset_len, chunk, batch_size and mix must be >= 1")
        self.n, self.chunk, self.batch_size, self.seed, self.mix = dataset_len, chunk, batch_size, seed, mix
        self.drop_last = drop_last
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next ``__iter__`` yield ``epoch``'s order, skipping its first ``start_batch`` batches."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def order(self, epoch: int) -> np.ndarray:
        """The full (n,) index order of ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch])
        n_chunks = -(-self.n // self.chunk)
        chunks = rng.permutation(n_chunks)
        parts = []
        for g in range(0, n_chunks, self.mix):
            pool = np.concatenate(
                [
                    np.arange(c * self.chunk, min((c + 1) * self.chunk, self.n))
                    for c in chunks[g : g + self.mix]
                ]
            )
            rng.shuffle(pool)
            parts.append(pool)
        return np.concatenate(parts)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, skip = self.epoch, self.start_batch
        self.epoch, self.start_batch = epoch + 1, 0
        order = self.order(epoch)
        for bi, s in enumerate(range(0, self.n, self.batch_size)):
            batch = order[s : s + self.batch_size]
            if self.drop_last and len(batch) < self.batch_size:
                return
            if bi >= skip:
                yield batch.tolist()

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)


def class_weights_from_counts(path_or_counts: str | os.PathLike | np.ndarray) -> np.ndarray:
    """(K,) float32 inverse-frequency class weights, normalised to mean 1 over present classes.

    ``path_or_counts``: a tile file (its ``class_counts``), or an (N, K) / (K,) count array.
    Classes with no pixels get weight 0 (a warning is logged).
    """
    if isinstance(path_or_counts, str | os.PathLike):
        read_tile_meta(path_or_counts)
        with h5py.File(path_or_counts, "r") as f:
            counts = f["class_counts"][:]
    else:
        counts = np.asarray(path_or_counts)
    totals = counts.reshape(-1, counts.shape[-1]).sum(axis=0).astype(np.float64)
    if totals.sum() <= 0:
        raise DataError("class counts are all zero; cannot derive class weights")
    present = totals > 0
    if not present.all():
        logger.warning("Classes %s have no pixels; their weight is 0", np.flatnonzero(~present).tolist())
    w = np.zeros_like(totals)
    w[present] = totals.sum() / totals[present]
    w[present] /= w[present].mean()
    return w.astype(np.float32)


def _loader_seed(cfg: Any) -> int:
    if int(cfg.SEED) >= 0:
        return int(cfg.SEED)
    seed = int(np.random.SeedSequence().entropy % (2**31))
    logger.info("SEED < 0: drew loader seed %d", seed)
    return seed


def build_unet_loaders(cfg: Any) -> tuple[DataLoader, DataLoader | None]:
    """Train and val loaders from UNET.DATA: TRAIN_H5, VAL_H5, BATCH_SIZE, NUM_WORKERS, AUGMENT, MIX_CHUNKS.

    Train batches come from a :class:`ChunkShuffleSampler` (``train_loader.batch_sampler``; it
    advances its epoch on every pass, ``set_epoch`` resumes). Validation reads in file order
    without augmentation; ``val_loader`` is None when UNET.DATA.VAL_H5 is "". UNET.DATA.COMPACT
    gives float16 / uint8 batches (convert with :func:`to_device`). Both files must
    match the config (:func:`expected_from_cfg`), else ConfigError.
    """
    d = cfg.UNET.DATA
    if not d.TRAIN_H5:
        raise ConfigError("UNET.DATA.TRAIN_H5 is empty; make tiles with tools/tile_h5.py and set it")
    expected = expected_from_cfg(cfg)
    seed = _loader_seed(cfg)
    nw = int(d.NUM_WORKERS)
    common: dict[str, Any] = {"num_workers": nw, "pin_memory": torch.cuda.is_available()}
    if nw > 0:
        common.update(persistent_workers=True, prefetch_factor=4)
    train_ds = H5TileDataset(d.TRAIN_H5, augment=bool(d.AUGMENT), expected=expected, compact=bool(d.COMPACT))
    sampler = ChunkShuffleSampler(
        len(train_ds), train_ds.chunk, int(d.BATCH_SIZE), seed, mix=int(d.MIX_CHUNKS)
    )
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(train_ds, batch_sampler=sampler, generator=gen, collate_fn=collate_tiles, **common)
    val = None
    if d.VAL_H5:
        val_ds = H5TileDataset(d.VAL_H5, augment=False, expected=expected, compact=bool(d.COMPACT))
        batches = BatchSampler(SequentialSampler(val_ds), int(d.BATCH_SIZE), drop_last=False)
        val = DataLoader(val_ds, batch_sampler=batches, collate_fn=collate_tiles, **common)
    return train, val
