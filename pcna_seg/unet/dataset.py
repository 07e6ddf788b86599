"""Torch side of HDF5 tile files (written by :mod:`pcna_seg.unet.tiling`) for U-Net training.

- :class:`H5TileDataset` opens the file lazily in each DataLoader worker (never keeps a handle
  from ``__init__``, so it pickles under spawn) and builds a whole batch in ``__getitems__``:
  each tile is copied once, already flipped/rotated, from a memory map of the file
  (:class:`~pcna_seg.unet.tile_io.MappedChunks`, uncompressed data) or from whole decoded
  chunks (:class:`~pcna_seg.unet.tile_io.DecodedChunks`, compressed data) into the batch.
  Augmentation is a pure function of (seed, epoch, tile index).
- :class:`ChunkShuffleSampler` yields batches in a chunk-aware random order: chunks are
  shuffled, then ``mix`` chunks at a time are pooled and their tiles shuffled, so a batch
  mixes tiles of several distant chunks (frames, wells) while every chunk is decompressed
  about once per epoch and worker (the decoded-chunk cache holds the pooled chunks).
- :class:`TileLoader` (a DataLoader) lets workers fill a fixed shared-memory ring of batches.
- :func:`build_unet_loaders` builds both loaders from ``cfg.UNET.DATA``.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import h5py
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from pcna_seg.errors import ConfigError, DataError
from pcna_seg.unet.tile_io import (
    DecodedChunks,
    MappedChunks,
    check_expected,
    dihedral_into,
    expected_from_cfg,
    read_tile_meta,
)

logger = logging.getLogger(__name__)


class EpochBatch(list):
    """A batch of tile indices (a ``list``) that also carries the ``epoch`` it was drawn for (so a
    worker's augmentation depends on (seed, epoch, index) only) and, from :class:`TileLoader`,
    the shared-memory ring ``slot`` to fill (-1: none) and the batch's sequence number ``seq``."""

    def __init__(self, indices: Sequence[int], epoch: int | None, slot: int = -1, seq: int = 0) -> None:
        super().__init__(indices)
        self.epoch, self.slot, self.seq = epoch, slot, seq


class RingRef(NamedTuple):
    """What a worker returns for a batch written into ring ``slot`` (``b`` tiles, sequence ``seq``)."""

    slot: int
    seq: int
    b: int

    def pin_memory(self) -> RingRef:  # the DataLoader's pin thread leaves it alone
        return self


class H5TileDataset(Dataset):
    """Tiles of one HDF5 tile file: item i = (image (C, T, T) float32 tensor, target (T, T) int64 tensor).

    ``augment``: random dihedral transform (rot90 × flip, same for image and target) and per
    channel intensity jitter ``x · (1 ± contrast) ± brightness`` (computed in float16). The
    transform of tile i in epoch e is a pure function of (``seed``, e, i) (:meth:`augment_params`),
    whatever the batch, worker or number of workers: e comes with the batch
    (:class:`EpochBatch`, as :class:`ChunkShuffleSampler` yields) or else from :meth:`set_epoch`.
    ``seed`` None: drawn from torch's global generator now. ``expected``: attrs the file must
    have (see :func:`expected_from_cfg`). ``compact``: items are (float16 image, uint8 target) —
    4× less worker → main and host → GPU traffic; convert on the device (:func:`to_device`);
    otherwise the float32 image equals the compact one converted. ``cache_chunks``: decoded
    chunks kept per dataset (compressed data only).
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
        seed: int | None = None,
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
        self.seed = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else int(seed)
        self.epoch = 0
        self._file: h5py.File | None = None
        self._params: tuple[int, tuple[np.ndarray, ...]] | None = None
        self._src: dict[str, MappedChunks | DecodedChunks] = {}
        self._stage: tuple[np.ndarray, np.ndarray] | None = None
        self._ring: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # shared, kept by workers

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_file=None, _params=None, _src={}, _stage=None)  # each process opens its own
        return state

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for batches that do not carry one (plain index lists, ``ds[i]``)."""
        self.epoch = int(epoch)

    def _sources(self) -> dict[str, MappedChunks | DecodedChunks]:
        if not self._src:
            try:  # no HDF5 chunk cache: rows come from the memory map or whole decoded chunks
                self._file = h5py.File(self.path, "r", rdcc_nbytes=0)
                for name in ("data", "labels"):
                    ds = self._file[name]
                    mapped = MappedChunks.open(ds, self.path)
                    self._src[name] = mapped or DecodedChunks(ds, self.chunk, self.cache_chunks)
            except (OSError, KeyError) as exc:
                self.close()
                raise DataError(f"Cannot open tile file {self.path}: {exc}") from None
        return self._src

    def close(self) -> None:
        """Close this process's file handle (it is reopened on the next read)."""
        self._src = {}
        if self._file is not None:
            self._file.close()
            self._file = None

    def augment_params(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Epoch's augmentation of every tile: rot90 count (N,) uint8, flip (N,) bool, gain and
        offset (N, C) float32; drawn for all tiles at once from (seed, epoch), cached per process."""
        if self._params is None or self._params[0] != epoch:
            rng = np.random.default_rng([self.seed, int(epoch), 0xA06])
            code = rng.integers(0, 8, self.n, dtype=np.uint8)
            c = len(self.channels)
            gain = 1.0 + rng.uniform(-self.contrast, self.contrast, (self.n, c)).astype(np.float32)
            offset = rng.uniform(-self.brightness, self.brightness, (self.n, c)).astype(np.float32)
            self._params = (int(epoch), (code >> 1, (code & 1).astype(bool), gain, offset))
        return self._params[1]  # type: ignore[return-value]

    def _fill(self, idx: np.ndarray, images: np.ndarray, targets: np.ndarray, epoch: int | None) -> None:
        """Copy tiles ``idx`` (transformed when ``epoch`` is not None) into images (B, C, T, T) and
        targets (B, T, T): one copy per tile straight from the file's rows."""
        src = self._sources()
        data, labels = src["data"], src["labels"]
        rot, flip = self.augment_params(epoch)[:2] if epoch is not None else (None, None)
        try:
            for i, r in enumerate(idx.tolist()):
                if rot is None:
                    images[i], targets[i] = data.row(r), labels.row(r)
                else:
                    dihedral_into(data.row(r), images[i], flip[r], rot[r])
                    dihedral_into(labels.row(r), targets[i], flip[r], rot[r])
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"Cannot read tiles from {self.path}: {exc} (corrupt file?)") from None

    def _check(self, indices: Sequence[int]) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"tile index out of range 0..{self.n - 1}")
        return idx

    def read_batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Raw rows in the given order: ((B, C, T, T) float16, (B, T, T) uint8), no augmentation."""
        idx = self._check(indices)
        data = np.empty((idx.size, len(self.channels), self.tile, self.tile), np.float16)
        labels = np.empty((idx.size, self.tile, self.tile), np.uint8)
        self._fill(idx, data, labels, None)
        return data, labels

    def _dtypes(self) -> tuple[torch.dtype, torch.dtype]:
        return (torch.float16, torch.uint8) if self.compact else (torch.float32, torch.int64)

    def attach_ring(self, slots: int, batch_size: int) -> None:
        """Allocate (once, before the workers start) a shared-memory ring of ``slots`` batches that
        workers fill in place for batches carrying a slot (:class:`TileLoader`)."""
        (img_t, tgt_t), c, t = self._dtypes(), len(self.channels), self.tile
        self._ring = (
            _new_tensor((slots, batch_size, c, t, t), img_t, True),
            _new_tensor((slots, batch_size, t, t), tgt_t, True),
            _new_tensor((slots,), torch.int64, True),
        )

    def take(self, ref: RingRef, pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy ring batch ``ref`` out (into pinned memory if ``pin``) so its slot can be refilled."""
        assert self._ring is not None
        images, targets, seqs = self._ring
        out = tuple(
            torch.empty((ref.b, *r.shape[2:]), dtype=r.dtype, pin_memory=pin).copy_(r[ref.slot, : ref.b])
            for r in (images, targets)
        )
        if int(seqs[ref.slot]) != ref.seq:
            raise RuntimeError(f"ring slot {ref.slot} was refilled before batch {ref.seq} was copied out")
        return out  # type: ignore[return-value]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]] | RingRef:
        """Samples ``indices`` as a list of (image, target) views of one batch tensor; in a worker
        given a ring slot (:class:`TileLoader`), the batch is written there and a RingRef returned."""
        idx = self._check(indices)
        b, c, t = idx.size, len(self.channels), self.tile
        epoch = getattr(indices, "epoch", None)
        epoch = (self.epoch if epoch is None else epoch) if self.augment else None
        shared = torch.utils.data.get_worker_info() is not None  # worker: fill shared memory directly
        slot, seq = getattr(indices, "slot", -1), getattr(indices, "seq", 0)
        ring = self._ring if shared and slot >= 0 and self._ring is not None else None
        if ring is not None and b <= ring[0].shape[1]:
            ring[2][slot] = seq
            ti, tt = ring[0][slot, :b], ring[1][slot, :b]
        else:
            ring = None
            ti, tt = (
                _new_tensor(shp, dt, shared) for shp, dt in zip(((b, c, t, t), (b, t, t)), self._dtypes())
            )
        if self.compact:
            img16, lab8 = ti, tt
        else:  # float16/uint8 staging, reused; torch converts (numpy's float16 casts are ~8× slower)
            if self._stage is None or len(self._stage[0]) < b:
                self._stage = (np.empty((b, c, t, t), np.float16), np.empty((b, t, t), np.uint8))
            img16, lab8 = (torch.from_numpy(s[:b]) for s in self._stage)
        self._fill(idx, img16.numpy(), lab8.numpy(), epoch)
        if epoch is not None:
            gain, offset = self.augment_params(epoch)[2:]
            img16.mul_(torch.from_numpy(gain[idx, :, None, None]).half())
            img16.add_(torch.from_numpy(offset[idx, :, None, None]).half())
        if not self.compact:
            ti.copy_(img16)
            tt.copy_(lab8)
        if ring is not None:
            return RingRef(slot, seq, b)
        return [(ti[i], tt[i]) for i in range(b)]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([int(i)])[0]


def to_device(
    images: torch.Tensor, targets: torch.Tensor, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a batch to ``device`` as float32 images and int64 targets (compact batches are converted
    there, after the 4× smaller transfer); non-blocking from pinned memory on CUDA."""
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


def collate_tiles(
    batch: list[tuple[torch.Tensor, torch.Tensor]] | RingRef,
) -> tuple[torch.Tensor, torch.Tensor] | RingRef:
    """Collate (image, target) samples → ((B, C, T, T), (B, T, T)) without copying when the samples
    come from one ``__getitems__`` call (else an ordinary stack); a RingRef passes through."""
    if isinstance(batch, RingRef):
        return batch
    return _batched([b[0] for b in batch]), _batched([b[1] for b in batch])


class _Slotted:
    """Batch sampler wrapper: batch k of an iteration gets ring slot k % slots and a unique seq."""

    def __init__(self, base: Any, slots: int, counter: Iterator[int]) -> None:
        self.base, self.slots, self.counter = base, slots, counter

    def __iter__(self) -> Iterator[EpochBatch]:
        for k, b in enumerate(self.base):
            yield EpochBatch(b, getattr(b, "epoch", None), k % self.slots, next(self.counter))

    def __len__(self) -> int:
        return len(self.base)


class TileLoader(DataLoader):
    """DataLoader for :class:`H5TileDataset` whose workers write batches into a fixed shared-memory
    ring of ``prefetch_factor × num_workers + 1`` batches instead of new shared memory per batch
    (page faults on fresh shared memory cost more than making the batch); this process copies
    each batch out (pinned when ``pin_memory``) as it arrives, before it asks for the next, so a
    slot is never refilled while in use (in order, at most prefetch × workers batches are in
    flight). One TileLoader per dataset; without workers it is a plain DataLoader."""

    def __init__(self, dataset: H5TileDataset, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._seq = itertools.count()
        self._slots = 0
        batch_size = getattr(self.batch_sampler, "batch_size", None)
        if self.num_workers > 0 and batch_size and getattr(self, "in_order", True):
            if dataset._ring is not None:
                raise ValueError("this H5TileDataset already feeds a TileLoader; make one dataset per loader")
            self._slots = int(self.prefetch_factor or 2) * self.num_workers + 1
            dataset.attach_ring(self._slots, int(batch_size))

    @property
    def _index_sampler(self) -> Any:
        base = super()._index_sampler
        return _Slotted(base, self._slots, self._seq) if self._slots else base

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # type: ignore[override]
        pin = bool(self.pin_memory) and torch.cuda.is_available()
        for batch in super().__iter__():
            yield self.dataset.take(batch, pin) if isinstance(batch, RingRef) else batch


class ChunkShuffleSampler:
    """Batch sampler (use as ``DataLoader(batch_sampler=…)``) that shuffles in chunk order.

    Per epoch: the chunks (``chunk`` consecutive tiles) are permuted; every ``mix`` consecutive
    chunks of that order are pooled and their tiles shuffled; the stream is cut into batches
    of ``batch_size``, each an :class:`EpochBatch` (index list + epoch). Seeded by (seed, epoch).
    Each ``__iter__`` uses the current epoch and then advances it; :meth:`set_epoch` resumes at
    an epoch (and optionally a batch within it).

    With ``world`` > 1 processes, ``batch_size`` is the batch over all of them: every process
    draws the same global order, padded at the end by repeating its first tiles so that each
    global batch is full, and takes its own ``batch_size // world`` slice of each batch (the
    processes then see disjoint tiles and the same number of batches).
    """

    def __init__(
        self,
        dataset_len: int,
        chunk: int,
        batch_size: int,
        seed: int = 0,
        mix: int = 4,
        drop_last: bool = False,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if dataset_len < 1 or chunk < 1 or batch_size < 1 or mix < 1:
            raise ValueError("dataset_len, chunk, batch_size and mix must be >= 1")
        if world < 1 or not 0 <= rank < world or batch_size % world:
            raise ConfigError(
                f"UNET.DATA.BATCH_SIZE {batch_size} is the batch over all {world} processes and must be "
                "a multiple of their number"
            )
        self.n, self.chunk, self.global_batch, self.seed, self.mix = dataset_len, chunk, batch_size, seed, mix
        self.rank, self.world = rank, world
        self.batch_size = batch_size // world  # what this process gets per batch
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

    def __iter__(self) -> Iterator[EpochBatch]:
        epoch, skip = self.epoch, self.start_batch
        self.epoch, self.start_batch = epoch + 1, 0
        order, gb = self.order(epoch), self.global_batch
        if self.world > 1 and not self.drop_last and len(order) % gb:
            order = np.resize(order, -(-len(order) // gb) * gb)  # pad by repeating from the start
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for bi, s in enumerate(range(0, len(order), gb)):
            batch = order[s : s + gb]
            if self.drop_last and len(batch) < gb:
                return
            if bi >= skip:
                yield EpochBatch((batch[mine] if self.world > 1 else batch).tolist(), epoch)

    def __len__(self) -> int:
        gb = self.global_batch
        return self.n // gb if self.drop_last else -(-self.n // gb)


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


def build_unet_loaders(
    cfg: Any, seed: int | None = None, rank: int = 0, world: int = 1
) -> tuple[DataLoader, DataLoader | None]:
    """Train and val loaders from UNET.DATA: TRAIN_H5, VAL_H5, BATCH_SIZE, NUM_WORKERS, AUGMENT, MIX_CHUNKS.

    Train batches come from a :class:`ChunkShuffleSampler` (``train_loader.batch_sampler``; it
    advances its epoch on every pass, ``set_epoch`` resumes); augmentation depends on (SEED,
    epoch, tile) only, so a resumed run sees the same tiles as an uninterrupted one. Validation
    reads in file order without augmentation; ``val_loader`` is None when UNET.DATA.VAL_H5 is "".
    UNET.DATA.COMPACT (default) gives float16 / uint8 batches, converted on the device by
    :func:`to_device`. Workers persist across epochs; batches are pinned only when CUDA is
    available. Both files must match the config (:func:`expected_from_cfg`), else ConfigError.
    ``seed``: the run's seed (default ``SEED``; a new one when it is < 0); ``rank`` / ``world``:
    this process's share of each training batch (:class:`ChunkShuffleSampler`).
    """
    d = cfg.UNET.DATA
    if not d.TRAIN_H5:
        raise ConfigError("UNET.DATA.TRAIN_H5 is empty; make tiles with tools/tile_h5.py and set it")
    from pcna_seg.unet.tile_split import check_split_files

    check_split_files(str(d.TRAIN_H5), str(d.VAL_H5 or ""))
    expected = expected_from_cfg(cfg)
    if seed is None:  # the trainer passes its run seed; alone, SEED < 0 draws one
        seed = int(cfg.SEED) if int(cfg.SEED) >= 0 else int(np.random.SeedSequence().entropy % (2**31))
    nw = int(d.NUM_WORKERS)
    common: dict[str, Any] = {"num_workers": nw, "pin_memory": torch.cuda.is_available()}
    if nw > 0:
        common.update(persistent_workers=True, prefetch_factor=4)
    kw = {"expected": expected, "compact": bool(d.COMPACT), "seed": seed}
    train_ds = H5TileDataset(d.TRAIN_H5, augment=bool(d.AUGMENT), **kw)
    sampler = ChunkShuffleSampler(
        len(train_ds), train_ds.chunk, int(d.BATCH_SIZE), seed, mix=int(d.MIX_CHUNKS), rank=rank, world=world
    )
    gen = torch.Generator().manual_seed(seed)
    train = TileLoader(train_ds, batch_sampler=sampler, generator=gen, collate_fn=collate_tiles, **common)
    val = None
    if d.VAL_H5:
        val_ds = H5TileDataset(d.VAL_H5, augment=False, **kw)
        batches = BatchSampler(SequentialSampler(val_ds), int(d.BATCH_SIZE), drop_last=False)
        val = TileLoader(val_ds, batch_sampler=batches, collate_fn=collate_tiles, **common)
    return train, val
