"""Tile dataset, chunk-aware sampler, class weights and loaders."""

from __future__ import annotations

import pickle
import shutil

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pcna_seg.config.config import load_config
from pcna_seg.data.synthetic.write_livedead import write
from pcna_seg.errors import ConfigError, DataError
from pcna_seg.unet.dataset import (
    ChunkShuffleSampler,
    DecodedChunks,
    EpochBatch,
    H5TileDataset,
    MappedChunks,
    RingRef,
    TileLoader,
    build_unet_loaders,
    class_weights_from_counts,
    collate_tiles,
    dihedral_into,
    expected_from_cfg,
    to_device,
)
from pcna_seg.unet.tile_split import split_training
from pcna_seg.unet.tiling import TilingSettings, discover_frames, tile_to_h5

OPTS = ["UNET.TILING.TILE", "64", "UNET.TILING.STRIDE", "32", "UNET.TILING.CHUNK_TILES", "16", "SEED", "0"]


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    write(root / "frames", wells=("A1", "A2"), timepoints=2, height=150, width=230, density=2e-3)
    s = TilingSettings(tile=64, stride=32, chunk_tiles=16)
    out = tile_to_h5(discover_frames(root / "frames"), root / "t.h5", s, workers=0, progress=False)
    paths = split_training(out, val_fraction=0.4, seed=0, progress=False)
    return {"all": out, **paths}


def _rows(path, idx):
    with h5py.File(path, "r") as f:
        return np.stack([f["data"][i] for i in idx]), np.stack([f["labels"][i] for i in idx])


def test_items_match_file_rows_and_pickle_after_use(tiles):
    ds = H5TileDataset(tiles["all"], augment=False)
    assert ds._file is None and len(ds) == 112 and ds.chunk == 16
    idx = [40, 3, 17, 3, 111, 16, 0]  # unsorted, duplicate, across chunks
    data, labels = _rows(tiles["all"], idx)
    batch = ds.__getitems__(idx)
    for (x, y), d, lab in zip(batch, data, labels):
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (2, 64, 64)
        assert np.array_equal(x.numpy(), d.astype(np.float32)) and np.array_equal(y.numpy(), lab)
    x5, y5 = ds[5]
    assert ds._file is not None  # opened lazily on first read
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._file is None
    assert torch.equal(clone[5][0], x5) and torch.equal(clone[5][1], y5)
    with pytest.raises(IndexError):
        ds.__getitems__([112])


def test_compressed_data_path_reads_the_same_rows(tiles, tmp_path):
    frames = tiles["all"].parent / "frames"
    s = TilingSettings(tile=64, stride=32, chunk_tiles=16, data_compression="lz4")
    lz4 = tile_to_h5(discover_frames(frames), tmp_path / "lz4.h5", s, workers=0, progress=False)
    raw, packed = H5TileDataset(tiles["all"], augment=False), H5TileDataset(lz4, augment=False)
    idx = [111, 0, 15, 16, 17, 50, 50, 90]
    (d1, l1), (d2, l2) = raw.read_batch(idx), packed.read_batch(idx)
    assert isinstance(raw._src["data"], MappedChunks) and isinstance(packed._src["data"], DecodedChunks)
    assert isinstance(raw._src["labels"], DecodedChunks)  # lz4 labels: whole decoded chunks
    assert np.array_equal(d1, d2) and np.array_equal(l1, l2)
    assert np.array_equal(d1, _rows(lz4, idx)[0]) and np.array_equal(l1, _rows(lz4, idx)[1])
    compact = H5TileDataset(lz4, augment=False, compact=True)
    x, y = compact[17]
    assert x.dtype == torch.float16 and y.dtype == torch.uint8
    xf, yf = to_device(x, y, "cpu")
    assert xf.dtype == torch.float32 and yf.dtype == torch.int64 and torch.equal(xf, raw[17][0])


def test_augmentation_is_a_shared_dihedral_transform_plus_intensity_jitter(tiles):
    torch.manual_seed(1)
    ds = H5TileDataset(tiles["all"], augment=True, contrast=0.1, brightness=0.05)
    idx = list(range(0, 112, 7))
    data, labels = _rows(tiles["all"], idx)
    seen = set()
    for (x, y), d, lab in zip(ds.__getitems__(idx), data, labels):
        x, y = x.numpy(), y.numpy()
        match = None
        for k in range(4):
            for flip in (False, True):
                dd, ll = (d[..., ::-1], lab[:, ::-1]) if flip else (d, lab)
                dd, ll = np.rot90(dd, k, axes=(1, 2)), np.rot90(ll, k)
                if np.array_equal(ll, y):
                    for c in range(2):  # x = gain * d + offset per channel
                        a = np.c_[dd[c].ravel().astype(np.float64), np.ones(dd[c].size)]
                        coef, res, *_ = np.linalg.lstsq(a, x[c].ravel(), rcond=None)
                        if not (abs(coef[0] - 1) <= 0.1 + 1e-6 and abs(coef[1]) <= 0.05 + 1e-6):
                            break
                        if not np.allclose(a @ coef, x[c].ravel(), atol=1e-3):
                            break
                    else:
                        match = (k, flip)
        assert match is not None
        seen.add(match)
    assert len(seen) >= 3  # transforms vary across the batch


def test_augmentation_depends_on_seed_epoch_and_index_only(tiles):
    ds = H5TileDataset(tiles["all"], augment=True, seed=7)
    a = ds.__getitems__(EpochBatch([5, 9, 40], 3))
    b = ds.__getitems__(EpochBatch([40, 1, 5, 77, 9], 3))  # other batch, other neighbours
    fresh = H5TileDataset(tiles["all"], augment=True, seed=7)  # another process's view
    c = fresh.__getitems__(EpochBatch([9], 3))
    for x, y in ((a[0], b[2]), (a[1], b[4]), (a[2], b[0]), (a[1], c[0])):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
    ds.set_epoch(3)  # plain index lists use the dataset's epoch
    assert torch.equal(ds[9][0], a[1][0])
    other_epoch = ds.__getitems__(EpochBatch([5, 9, 40], 4))
    other_seed = H5TileDataset(tiles["all"], augment=True, seed=8).__getitems__(EpochBatch([5, 9, 40], 3))
    for other in (other_epoch, other_seed):
        assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, other))
    compact = H5TileDataset(tiles["all"], augment=True, seed=7, compact=True)
    xc, yc = compact.__getitems__(EpochBatch([5, 9, 40], 3))[1]
    assert xc.dtype == torch.float16 and yc.dtype == torch.uint8  # float32 path = compact converted
    assert torch.equal(xc.float(), a[1][0]) and torch.equal(yc.long(), a[1][1])


def test_dihedral_into_matches_numpy_flip_and_rot90():
    rng = np.random.default_rng(0)
    for a in (rng.random((2, 6, 6)).astype(np.float16), rng.integers(0, 3, (6, 6)).astype(np.uint8)):
        a.setflags(write=False)  # rows come from a read-only memory map
        for flip in (False, True):
            for k in range(4):
                out = np.empty_like(a)
                dihedral_into(a, out, flip, k)
                assert np.array_equal(out, np.rot90(a[..., ::-1] if flip else a, k, axes=(-2, -1)))


def test_chunk_shuffle_sampler_order_and_resume():
    s = ChunkShuffleSampler(1000, 64, 100, seed=5, mix=4)
    e0, e1 = list(s), list(s)  # each pass advances the epoch
    assert len(e0) == len(s) == 10
    assert isinstance(e1[0], EpochBatch) and e0[0].epoch == 0 and e1[0].epoch == 1
    for epoch in (e0, e1):
        flat = np.concatenate(epoch)
        assert sorted(flat.tolist()) == list(range(1000))
        for b in epoch:  # a batch straddles at most two pools of `mix` chunks
            assert len(np.unique(np.asarray(b) // 64)) <= 8
    assert e0 != e1
    s.set_epoch(1, start_batch=3)
    assert list(s) == e1[3:]
    assert len(list(ChunkShuffleSampler(1000, 64, 100, 0, drop_last=True))) == 10
    assert len(ChunkShuffleSampler(1001, 64, 100, 0, drop_last=True)) == 10


def test_class_weights_from_counts(tiles):
    w = class_weights_from_counts(np.array([[90, 9, 1], [0, 0, 0]]))
    assert w.shape == (3,) and w.dtype == np.float32
    assert np.allclose(w.mean(), 1.0) and w[0] < w[1] < w[2]
    assert np.allclose(w / w[0], [1, 10, 90], rtol=1e-5)
    assert class_weights_from_counts(np.array([5, 0, 5])).tolist() == [1.0, 0.0, 1.0]
    with h5py.File(tiles["train"], "r") as f:
        counts = f["class_counts"][:]
    assert np.allclose(class_weights_from_counts(tiles["train"]), class_weights_from_counts(counts))


def test_loaders_from_config_and_seeded_workers(tiles):
    opts = [*OPTS, "UNET.DATA.TRAIN_H5", str(tiles["train"]), "UNET.DATA.VAL_H5", str(tiles["val"])]
    train, val = build_unet_loaders(load_config(None, [*opts, "UNET.DATA.BATCH_SIZE", "8"]))
    assert isinstance(train, TileLoader) and isinstance(train.batch_sampler, ChunkShuffleSampler)
    x, y = next(iter(train))  # default: compact batches from 2 persistent workers
    assert x.shape == (8, 2, 64, 64) and x.dtype == torch.float16
    assert y.shape == (8, 64, 64) and y.dtype == torch.uint8
    n_val = sum(len(b[0]) for b in val)
    assert n_val == len(val.dataset)

    def epochs(workers: int, seed: int = 0) -> list:
        extra = ["UNET.DATA.BATCH_SIZE", "4", "UNET.DATA.NUM_WORKERS", str(workers), "SEED", str(seed)]
        train, _ = build_unet_loaders(load_config(None, [*opts, *extra, "UNET.DATA.COMPACT", "False"]))
        train.batch_sampler.set_epoch(1)
        return list(train) + list(train)  # epochs 1 and 2, every batch kept

    a, b = epochs(0), epochs(2)
    assert len(a) > 2 * 9 and a[0][0].dtype == torch.float32  # more batches than ring slots
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):  # same tiles and augmentation, any worker count
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, epochs(0, seed=1)))
    plain = H5TileDataset(tiles["train"], augment=False)  # ring path delivers the file's rows
    sampler = ChunkShuffleSampler(len(plain), plain.chunk, 4, seed=0)
    loader = TileLoader(plain, batch_sampler=sampler, num_workers=2, collate_fn=collate_tiles)
    batches = list(sampler)
    sampler.set_epoch(0)  # replay epoch 0 through the loader
    for (xb, yb), idx in zip(list(loader), batches, strict=True):
        data, labels = _rows(tiles["train"], idx)
        assert np.array_equal(xb.numpy(), data.astype(np.float32)) and np.array_equal(yb.numpy(), labels)
    with pytest.raises(ValueError, match="one dataset per loader"):
        TileLoader(plain, batch_sampler=sampler, num_workers=1, collate_fn=collate_tiles)
    with pytest.raises(RuntimeError, match="refilled"):  # a slot overwritten too early is detected
        plain._ring[2][0] = 7
        plain.take(RingRef(slot=0, seq=6, b=4))
    plain_loader = DataLoader(plain, batch_sampler=batches, num_workers=1, collate_fn=collate_tiles)
    xb, _ = next(iter(plain_loader))  # plain DataLoader: fresh shared memory per batch
    assert np.array_equal(xb.numpy(), _rows(tiles["train"], batches[0])[0].astype(np.float32))


def test_config_mismatch_names_file_attribute_and_values(tiles):
    cfg = load_config(None, ["UNET.DATA.TRAIN_H5", str(tiles["train"])])  # default tile 160
    with pytest.raises(ConfigError, match=r"t_train\.h5.*tile=64.*UNET\.TILING\.TILE=160"):
        build_unet_loaders(cfg)
    exp = expected_from_cfg(load_config(None, [*OPTS, "UNET.MODE", "contour", "UNET.CLASSES", "[a, b, c]"]))
    with pytest.raises(ConfigError, match="mode='livedead'.*UNET.MODE='contour'"):
        H5TileDataset(tiles["train"], augment=False, expected={"mode": exp["mode"]})
    with pytest.raises(ConfigError, match="classes"):
        H5TileDataset(tiles["train"], augment=False, expected=exp | {"mode": "livedead"})
    with pytest.raises(ConfigError, match="TRAIN_H5"):
        build_unet_loaders(load_config(None, []))


def test_corrupt_truncated_and_incomplete_files(tiles, tmp_path):
    trunc = tmp_path / "trunc.h5"
    raw = tiles["all"].read_bytes()
    trunc.write_bytes(raw[: len(raw) // 2])
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file" * 100)
    incomplete = tmp_path / "incomplete.h5"
    shutil.copy(tiles["all"], incomplete)
    with h5py.File(incomplete, "a") as f:
        f.attrs["complete"] = False
    for path, msg in (
        (trunc, "trunc.h5"),
        (junk, "junk.h5"),
        (incomplete, "incomplete"),
        (tmp_path / "no.h5", "not found"),
    ):
        with pytest.raises(DataError, match=msg):
            H5TileDataset(path, augment=False)
