"""Benchmark: U-Net data side — tiling throughput, chunk layout, loader throughput.

(1) Tiling: synthetic stitched frames (``--frames`` of ``--height`` × ``--width``, 2 channels)
    tiled 160/80 with ``--tile-workers`` processes; tiles/s, and output MB/s as a ratio to a
    plain copy of the same file.
(2) Chunk layout: the same realistic tiles written (a) as the seed did — 1000-tile chunks,
    gzip — and (b) with this project's 64-tile chunks (lz4 and uncompressed); cost of one
    random sample (h5py defaults, what a plain ``Dataset.__getitem__`` does) and of a batch
    of 100 drawn by :class:`ChunkShuffleSampler` through :class:`H5TileDataset`.
(3) Loader: an HDF5 of ``--loader-tiles`` (default 100k) 160×160×2 tiles (the realistic tiles
    of (1) repeated, or noise with ``--random-tiles``), read by the trainer's own loaders
    (``build_unet_loaders``: TileLoader, persistent workers) with ``--loader-workers`` workers,
    batch 100: augmented float32/int64 and compact float16/uint8 (the default), without
    augmentation, and with 0 workers; ``--baseline OLD_dataset.py`` adds the same loaders of an
    older dataset module (``git show REV:pcna_seg/unet/dataset.py > old.py``) for a before/after
    ratio in one run. After ``--warmup`` batches, ``--batches`` batches delivered to the main
    process are timed: wall tiles/s, CPU per tile (main + workers, from /proc), the rate that
    cost allows on 2 dedicated cores (target ≥ 5,000 tiles/s), the 1-minute load average
    (includes the benchmark's own processes) and the cores other jobs used meanwhile.
(4) Training throughput, when ``benchmarks/bench_unet_train.py`` provides ``run``.

    python benchmarks/bench_unet.py [--workdir DIR] [--sections tiling,layout,loader,train]
        [--loader-tiles 100000] [--baseline old_dataset.py] [--random-tiles] [--quick]

Everything is written under a temporary folder (or ``--workdir``) and deleted afterwards.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import logging
import os
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

from pcna_seg.config import load_config  # noqa: E402
from pcna_seg.data.synthetic.write_livedead import write  # noqa: E402
from pcna_seg.unet.dataset import ChunkShuffleSampler, H5TileDataset, build_unet_loaders, to_device  # noqa: E402
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


def make_big_file(path: Path, like: Path, n: int, random_tiles: bool, block: int = 6400) -> float:
    """Write ``n`` tiles with the project layout in blocks of ``block``; returns seconds.

    Default: the realistic tiles of ``like`` repeated (labels compress like real ones);
    ``random_tiles``: uniform noise images and labels (worst case for the lz4 labels)."""
    rng = np.random.default_rng(0)
    if random_tiles:
        data = rng.random((block, 2, 160, 160), dtype=np.float32).astype(np.float16)
        labels = rng.integers(0, 3, (block, 160, 160), dtype=np.uint8)
    else:
        with h5py.File(like, "r") as f:
            pick = np.sort(rng.choice(f["data"].shape[0], min(block, f["data"].shape[0]), replace=False))
            data, labels = f["data"][pick], f["labels"][pick]
        rep = -(-block // len(data))
        data, labels = np.tile(data, (rep, 1, 1, 1))[:block], np.tile(labels, (rep, 1, 1))[:block]
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


def _worker_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of live processes ``pids`` (Linux /proc; 0 elsewhere)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _busy_cpu() -> float:
    """CPU seconds all processes of this machine have used (Linux /proc/stat; 0 elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def _baseline_loader(mod, path: Path, aug: bool, nw: int, compact: bool, epoch: int) -> DataLoader:
    """A loader built the way the baseline module's ``build_unet_loaders`` built it."""
    ds = mod.H5TileDataset(path, augment=aug, compact=compact)
    sampler = mod.ChunkShuffleSampler(len(ds), ds.chunk, 100, 0, mix=4)
    sampler.set_epoch(epoch)
    kw = {"persistent_workers": True, "prefetch_factor": 4} if nw else {}
    gen = torch.Generator().manual_seed(0)
    return DataLoader(
        ds, batch_sampler=sampler, num_workers=nw, generator=gen, collate_fn=mod.collate_tiles, **kw
    )


def _loader(path: Path, aug: bool, nw: int, compact: bool, epoch: int) -> DataLoader:
    """The trainer's loader: ``build_unet_loaders`` of a default config pointed at ``path``."""
    opts = ["UNET.DATA.TRAIN_H5", str(path), "UNET.DATA.BATCH_SIZE", "100", "SEED", "0"]
    opts += ["UNET.DATA.NUM_WORKERS", str(nw), "UNET.DATA.AUGMENT", str(aug)]
    opts += ["UNET.DATA.COMPACT", str(compact)]
    train, _ = build_unet_loaders(load_config(None, opts))
    train.batch_sampler.set_epoch(epoch)  # a different order per configuration: no cache head start
    return train


def time_loader(loader: DataLoader, n_batches: int, warmup: int) -> dict:
    """Iterate ``warmup`` batches (starts the workers), then time ``n_batches`` delivered to this
    process; CPU = this process + its workers over the timed window; ``others``: cores that other
    jobs kept busy meanwhile (machine-wide busy CPU minus ours, per wall second)."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    inner = getattr(loader, "_iterator", None) or it  # TileLoader iterates a persistent DataLoader iterator
    pids = [w.pid for w in getattr(inner, "_workers", [])]
    load0, busy0 = os.getloadavg()[0], _busy_cpu()
    c0, t0, count = time.process_time() + _worker_cpu(pids), time.perf_counter(), 0
    for _ in range(n_batches):
        x, y = next(it)
        count += x.shape[0]
    wall = time.perf_counter() - t0
    cpu = time.process_time() + _worker_cpu(pids) - c0
    others = max(0.0, _busy_cpu() - busy0 - cpu) / wall
    if hasattr(inner, "_shutdown_workers"):
        inner._shutdown_workers()
    load = (load0 + os.getloadavg()[0]) / 2
    return {"tiles": count, "wall": wall, "cpu": cpu, "load": load, "others": others, "x": x, "y": y}


def bench_loader(work: Path, like: Path, a: argparse.Namespace) -> None:
    """Loader wall rate, CPU per tile of the whole pipeline (main + workers) and the rate that
    CPU cost projects for 2 dedicated cores; the baseline rows use ``--baseline`` (an older
    dataset.py), the others exactly the trainer's ``build_unet_loaders``."""
    path, nw = work / "big.h5", a.loader_workers
    dt = make_big_file(path, like, a.loader_tiles, a.random_tiles)
    kind = "random" if a.random_tiles else "realistic (repeated)"
    print(f"\n(3) wrote {a.loader_tiles} {kind} tiles ({path.stat().st_size / 1e9:.1f} GB) in {dt:.0f} s")
    configs = []  # (name, factory(epoch) -> loader)
    if a.baseline:
        spec = importlib.util.spec_from_file_location("baseline_dataset", a.baseline)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["baseline_dataset"] = mod
        spec.loader.exec_module(mod)
        configs += [
            ("baseline float32", lambda e: _baseline_loader(mod, path, True, nw, False, e)),
            ("baseline compact", lambda e: _baseline_loader(mod, path, True, nw, True, e)),
        ]
    configs += [
        ("new float32", lambda e: _loader(path, True, nw, False, e)),
        ("new default (compact)", lambda e: _loader(path, True, nw, True, e)),
        ("new default, no augment", lambda e: _loader(path, False, nw, True, e)),
        ("new default, 0 workers", lambda e: _loader(path, True, 0, True, e)),
    ]
    rows, res = [], {}
    for epoch, (name, factory) in enumerate(configs):
        loader = factory(epoch)
        r = time_loader(loader, a.batches, a.warmup)
        del loader
        gc.collect()
        res[name] = r
        workers = 0 if "0 workers" in name else nw
        per_tile = r["cpu"] / r["tiles"] * 1e3
        batch = f"{str(r['x'].dtype)[6:]}/{str(r['y'].dtype)[6:]}"
        rows.append(
            [name, workers, batch, r["tiles"], f"{r['tiles'] / r['wall']:.0f}", f"{per_tile:.3f}",
             f"{2 / per_tile * 1e3:.0f}", f"{r['load']:.2f}", f"{r['others']:.2f}"]
        )  # fmt: skip
    table(
        f"(3) Loader throughput, {a.loader_tiles}-tile file, batch 100, {a.warmup} warm-up + {a.batches} "
        f"timed batches delivered to the main process, {os.cpu_count()} cores",
        [
            "loader",
            "workers",
            "batch dtypes",
            "tiles",
            "tiles/s wall",
            "CPU ms/tile",
            "2-core tiles/s",
            "loadavg",
            "other jobs (cores)",
        ],
        rows,
    )
    x, y = res["new default (compact)"]["x"], res["new default (compact)"]["y"]
    t0 = time.perf_counter()
    for _ in range(20):
        to_device(x, y, "cpu")
    conv = (time.perf_counter() - t0) / 20 * 1e3
    print(f"    to_device(compact batch, 'cpu'): {conv:.1f} ms/batch in the main process (0 on a GPU host)")
    ref = "baseline float32" if "baseline float32" in res else "new float32"
    old, new = res[ref], res["new default (compact)"]
    rate = [r["tiles"] / r["wall"] for r in (old, new)]
    cpu = [r["cpu"] / r["tiles"] * 1e3 for r in (old, new)]
    table(
        f"(3b) New default (compact, augmented, {nw} workers) vs {ref}",
        ["metric", ref, "new default", "ratio new/old"],
        [
            ["tiles/s wall", f"{rate[0]:.0f}", f"{rate[1]:.0f}", f"{rate[1] / rate[0]:.2f}"],
            ["CPU ms/tile", f"{cpu[0]:.3f}", f"{cpu[1]:.3f}", f"{cpu[1] / cpu[0]:.2f}"],
            ["2-core tiles/s", f"{2e3 / cpu[0]:.0f}", f"{2e3 / cpu[1]:.0f}", f"{cpu[0] / cpu[1]:.2f}"],
        ],
    )
    path.unlink()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--sections", default="tiling,layout,loader,train", help="comma list of sections to run")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--height", type=int, default=2700)
    p.add_argument("--width", type=int, default=3600)
    p.add_argument("--tile-workers", type=int, default=2)
    p.add_argument("--layout-tiles", type=int, default=4000)
    p.add_argument("--loader-tiles", type=int, default=100_000)
    p.add_argument("--loader-workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=300, help="timed loader batches (of 100) per configuration")
    p.add_argument("--warmup", type=int, default=20, help="untimed loader batches first (worker start-up)")
    p.add_argument("--random-tiles", action="store_true", help="loader file of noise tiles, not real ones")
    p.add_argument(
        "--baseline", type=Path, default=None, help="an older dataset.py to compare the loader with"
    )
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test of the script)")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if a.quick:
        a.frames, a.height, a.width, a.layout_tiles, a.loader_tiles, a.batches = 2, 540, 720, 2000, 5000, 20
        a.warmup = 5
    sections = set(a.sections.split(","))
    print(f"cpu cores: {os.cpu_count()}, torch {torch.__version__}, h5py {h5py.__version__}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    work = Path(tempfile.mkdtemp(prefix="bench_unet_", dir=a.workdir))
    try:
        if sections & {"tiling", "layout", "loader"}:
            tiles = bench_tiling(work, a.frames, a.height, a.width, a.tile_workers)
        if "layout" in sections:
            bench_layout(work, tiles, a.layout_tiles, a.quick)
        if "loader" in sections:
            bench_loader(work, tiles, a)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if "train" not in sections:
        return
    try:
        from bench_unet_train import run as run_train
    except ImportError:
        print("\n(4) training throughput: benchmarks/bench_unet_train.py not present, skipped")
    else:
        run_train()


if __name__ == "__main__":
    main()
