"""Benchmark: U-Net data side — tiling throughput, chunk layout, loader throughput.

(1) Tiling: synthetic stitched frames (``--frames`` of ``--height`` × ``--width``, 2 channels)
    tiled 160/80 with ``--tile-workers`` processes; tiles/s, and output MB/s as a ratio to a
    plain copy of the same file.
(2) Chunk layout: the same realistic tiles written (a) as the seed did — 1000-tile chunks,
    gzip — and (b) with this project's 64-tile chunks (lz4 and uncompressed); cost of one
    random sample (h5py defaults, what a plain ``Dataset.__getitem__`` does) and of a batch
    of 100 drawn by :class:`ChunkShuffleSampler` through :class:`H5TileDataset`.
(3) Loader: an HDF5 of ``--loader-tiles`` (default 100k) random 160×160×2 tiles written in big
    blocks, read by ``build_unet_loaders``-style DataLoaders with ``--loader-workers`` workers
    (batch 100), with and without augmentation, float32/int64 and compact float16/uint8
    batches; wall tiles/s, CPU per tile (main + reaped workers) and the rate that cost allows on
    2 dedicated cores (target ≥ 5,000 tiles/s).
(4) Training throughput, when ``benchmarks/bench_unet_train.py`` provides ``run``.

    python benchmarks/bench_unet.py [--workdir DIR] [--frames 4] [--loader-tiles 100000] [--quick]

Everything is written under a temporary folder (or ``--workdir``) and deleted afterwards.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pcna_seg.data.synthetic.write_livedead import write  # noqa: E402
from pcna_seg.unet.dataset import ChunkShuffleSampler, H5TileDataset, collate_tiles  # noqa: E402
from pcna_seg.unet.tiling import TilingSettings, create_tile_datasets, discover_frames, tile_to_h5  # noqa: E402


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(r, widths)))


def bench_tiling(work: Path, n_frames: int, height: int, width: int, workers: int) -> Path:
    frames = work / "frames"
    wells = [f"W{i}" for i in range((n_frames + 1) // 2)]
    write(frames, wells=wells, timepoints=2 if n_frames > 1 else 1, height=height, width=width)
    sources = discover_frames(frames)[:n_frames]
    rows, keep = [], None
    for comp in ("none", "lz4"):  # "none": the default (float16 data raw, labels lz4)
        out = work / f"tiles_{comp}.h5"
        t0 = time.perf_counter()
        s = TilingSettings(data_compression=comp)
        tile_to_h5(sources, out, s, workers=workers, progress=False)
        dt = time.perf_counter() - t0
        with h5py.File(out, "r") as f:
            n = f["data"].shape[0]
            logical = (f["data"].size * 2 + f["labels"].size) / 1e6
        size = out.stat().st_size / 1e6
        t0 = time.perf_counter()
        shutil.copyfile(out, work / "copy.h5")
        dc = time.perf_counter() - t0
        (work / "copy.h5").unlink()
        rows.append(
            [
                f"data {comp}",
                len(sources),
                n,
                f"{dt:.1f}",
                f"{n / dt:.0f}",
                f"{logical / dt:.0f}",
                f"{size:.0f}",
                f"{size / dt:.0f}",
                f"{size / dc:.0f}",
                f"{(size / dt) / (size / dc):.3f}",
            ]
        )
        keep = out if comp == "none" else keep
        if comp == "lz4":
            out.unlink()
    table(
        f"(1) Tiling {height}x{width} frames, tile 160 / stride 80, {workers} workers",
        ["compr", "frames", "tiles", "s", "tiles/s", "tileMB/s", "fileMB", "file MB/s", "copy MB/s", "ratio"],
        rows,
    )
    assert keep is not None
    return keep


def _write_layout(path: Path, data: np.ndarray, labels: np.ndarray, n: int, chunk: int, comps: tuple) -> None:
    c, t = data.shape[1], data.shape[2]
    with h5py.File(path, "w") as f:
        d = f.create_dataset("data", (n, c, t, t), np.float16, chunks=(chunk, c, t, t), **comps[0])
        lab = f.create_dataset("labels", (n, t, t), np.uint8, chunks=(chunk, t, t), **comps[1])
        for a in range(0, n, len(data)):
            b = min(a + len(data), n)
            d[a:b], lab[a:b] = data[: b - a], labels[: b - a]


def _copy_as_tile_file(path: Path, like: Path) -> None:
    """Give a bare layout file the attrs/datasets H5TileDataset needs (copied from ``like``)."""
    with h5py.File(like, "r") as src, h5py.File(path, "a") as f:
        f.attrs.update(dict(src.attrs))
        n = f["data"].shape[0]
        f.create_dataset("class_counts", data=np.zeros((n, len(src.attrs["classes"])), np.int32))
        f.create_dataset("source", data=np.zeros((n, 3), np.int32))
        for name in ("frames", "groups"):
            src.copy(src[name], f, name)


def bench_layout(work: Path, tiles_file: Path, n: int, quick: bool) -> None:
    with h5py.File(tiles_file, "r") as f:
        m = min(f["data"].shape[0], 2000)
        data, labels = f["data"][:m], f["labels"][:m]
    gz, lz4 = {"compression": "gzip"}, dict(hdf5plugin.LZ4())
    layouts = [
        ("seed: 1000-chunk, gzip", 1000, (gz, gz)),
        ("seed: 1000-chunk, lz4", 1000, (lz4, lz4)),
        ("ours: 64-chunk, lz4", 64, (lz4, lz4)),
        ("ours: 64-chunk, data raw + labels lz4", 64, ({}, lz4)),
    ]
    rng = np.random.default_rng(0)
    rows, base = [], None
    for name, chunk, comps in layouts:
        path = work / "layout.h5"
        _write_layout(path, data, labels, n, chunk, comps)
        _copy_as_tile_file(path, tiles_file)
        size = path.stat().st_size / 1e6
        idx = rng.integers(0, n, 5 if quick or chunk == 1000 else 50)
        with h5py.File(path, "r") as f:  # h5py defaults: 1 MiB chunk cache
            t0 = time.perf_counter()
            for i in idx.tolist():
                f["data"][i], f["labels"][i]
            single = (time.perf_counter() - t0) / len(idx) * 1e3
        ds = H5TileDataset(path, augment=False, cache_chunks=max(2, 16 * 64 // chunk))
        batches = list(ChunkShuffleSampler(n, chunk, 100, 0, mix=4))[: 3 if chunk == 1000 else 40]
        t0 = time.perf_counter()
        for b in batches:
            ds.read_batch(b)
        batch = (time.perf_counter() - t0) / len(batches) * 1e3
        ds.close()
        base = base or single
        rows.append(
            [
                name,
                f"{size:.0f}",
                f"{single:.1f}",
                f"{base / single:.0f}x",
                f"{batch:.0f}",
                f"{1e5 / batch:.0f}",
            ]
        )
        path.unlink()
    table(
        f"(2) Random-sample read cost, {n} realistic tiles (160x160x2 float16 + uint8 labels)",
        ["layout", "MB", "ms/random sample", "speed-up", "ms/batch100 (sampler)", "tiles/s"],
        rows,
    )


def make_big_file(path: Path, like: Path, n: int, block: int = 6400) -> float:
    """Write ``n`` random tiles in blocks of ``block`` with the project layout; returns seconds."""
    rng = np.random.default_rng(0)
    data = rng.random((block, 2, 160, 160), dtype=np.float32).astype(np.float16)
    labels = rng.integers(0, 3, (block, 160, 160), dtype=np.uint8)
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f, h5py.File(like, "r") as src:
        create_tile_datasets(f, TilingSettings(), 2)
        for name in ("data", "labels", "class_counts", "source"):
            f[name].resize(n, axis=0)
        for a in range(0, n, block):
            b = min(a + block, n)
            f["data"][a:b], f["labels"][a:b] = data[: b - a], labels[: b - a]
        f["class_counts"][:] = 1
        f.attrs.update(dict(src.attrs))
        f.attrs["n_tiles"] = n
        for name in ("frames", "groups"):
            src.copy(src[name], f, name)
    return time.perf_counter() - t0


def bench_loader(work: Path, like: Path, n: int, workers: int, n_batches: int) -> None:
    """Loader wall rate, plus CPU per tile of the whole pipeline (workers reaped → exact) and the
    rate that CPU cost projects for 2 dedicated cores (this machine is shared while measuring)."""
    path = work / "big.h5"
    dt = make_big_file(path, like, n)
    print(f"\n(3) wrote {n} random tiles ({path.stat().st_size / 1e9:.1f} GB) in {dt:.0f} s")
    rows = []
    configs = ((True, workers, False), (True, workers, True), (False, workers, False), (True, 0, False))
    for epoch, (aug, nw, compact) in enumerate(configs):
        ds = H5TileDataset(path, augment=aug, compact=compact)
        sampler = ChunkShuffleSampler(len(ds), ds.chunk, 100, 0, mix=4)
        sampler.set_epoch(epoch)  # a different order per configuration: no page-cache head start
        batches = list(sampler)[:n_batches]
        kw = {"prefetch_factor": 4} if nw else {}
        loader = DataLoader(ds, batch_sampler=batches, num_workers=nw, collate_fn=collate_tiles, **kw)
        r0, c0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
        t0, count = time.perf_counter(), 0
        for xy in loader:
            count += xy[0].shape[0]
        x, y = xy
        wall = time.perf_counter() - t0
        del loader
        gc.collect()
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = time.process_time() - c0 + (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        assert x.dtype == (torch.float16 if compact else torch.float32)
        batch = f"{str(x.dtype)[6:]}/{str(y.dtype)[6:]}"
        per_tile = cpu / count * 1e3
        rows.append(
            [nw, "yes" if aug else "no", batch, count, f"{count / wall:.0f}", f"{per_tile:.3f}",
             f"{2 / per_tile * 1e3:.0f}", f"{2 / per_tile * 1e3 / 5000:.2f}"]
        )  # fmt: skip
    table(
        f"(3) Loader throughput, {n}-tile file, batch 100, ChunkShuffleSampler(mix=4), {n_batches} batches",
        [
            "workers",
            "augment",
            "batch dtypes",
            "tiles",
            "tiles/s wall",
            "CPU ms/tile",
            "2-core tiles/s",
            "vs 5k",
        ],
        rows,
    )
    path.unlink()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--height", type=int, default=2700)
    p.add_argument("--width", type=int, default=3600)
    p.add_argument("--tile-workers", type=int, default=2)
    p.add_argument("--layout-tiles", type=int, default=4000)
    p.add_argument("--loader-tiles", type=int, default=100_000)
    p.add_argument("--loader-workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=300, help="loader batches (of 100) per configuration")
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test of the script)")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if a.quick:
        a.frames, a.height, a.width, a.layout_tiles, a.loader_tiles, a.batches = 2, 540, 720, 2000, 5000, 20
    print(f"cpu cores: {os.cpu_count()}, torch {torch.__version__}, h5py {h5py.__version__}")
    work = Path(tempfile.mkdtemp(prefix="bench_unet_", dir=a.workdir))
    try:
        tiles = bench_tiling(work, a.frames, a.height, a.width, a.tile_workers)
        bench_layout(work, tiles, a.layout_tiles, a.quick)
        bench_loader(work, tiles, a.loader_tiles, a.loader_workers, a.batches)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    try:
        from bench_unet_train import run as run_train
    except ImportError:
        print("\n(4) training throughput: benchmarks/bench_unet_train.py not present, skipped")
    else:
        run_train()


if __name__ == "__main__":
    main()
