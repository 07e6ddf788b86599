"""HDF5 tiling: provenance of every tile, border coverage, resume, split by well, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from pcna_seg.data.synthetic.write_livedead import write
from pcna_seg.errors import DataError
from pcna_seg.unet.tile_split import choose_val_groups, split_training
from pcna_seg.unet.tiling import (
    ARRAYS,
    TilingSettings,
    discover_frames,
    normalize_frame,
    partial_path,
    read_frame,
    tile_to_h5,
)

REPO = Path(__file__).resolve().parents[2]
S = TilingSettings(tile=64, stride=32, chunk_tiles=16)


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ld")
    write(root, wells=("A1", "A2", "B1"), timepoints=2, height=150, width=230, density=2e-3)
    return root


def _tiles(frames: Path, out: Path, s: TilingSettings = S, **kw) -> Path:
    return tile_to_h5(
        discover_frames(frames, s.mode), out, s, workers=kw.pop("workers", 0), progress=False, **kw
    )


def _content(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        out = {name: f[name][:] for name in (*ARRAYS, "frames", "groups")}
        out["attrs"] = {k: np.asarray(v).tolist() for k, v in f.attrs.items()}
    return out


def test_every_tile_traces_back_and_borders_are_covered(frames, tmp_path):
    out = _tiles(frames, tmp_path / "t.h5")
    sources = discover_frames(frames)
    with h5py.File(out, "r") as f:
        assert f.attrs["complete"] and not partial_path(out).exists()
        assert f.attrs["border"] == "shift" and f.attrs["pcna_seg_tiles_version"] == 1
        data, labels, counts, src = (f[k][:] for k in ARRAYS)
        assert data.dtype == np.float16 and data.shape[1:] == (2, 64, 64) and labels.dtype == np.uint8
        assert (
            f["data"].chunks[0] == 16
            and [g.decode() for g in f["groups"][:]] == ["A1"] * 2 + ["A2"] * 2 + ["B1"] * 2
        )
    assert len(data) == 6 * 4 * 7  # 150 → 0,32,64,86; 230 → 0,32,…,160,166
    for k, source in enumerate(sources):
        image, target = read_frame(source, S)
        norm = normalize_frame(image, S.normalization, S.percentiles).astype(np.float16)
        covered = np.zeros(target.shape, bool)
        for i in np.flatnonzero(src[:, 0] == k):
            y, x = src[i, 1:]
            assert np.array_equal(data[i], norm[:, y : y + 64, x : x + 64])
            assert np.array_equal(labels[i], target[y : y + 64, x : x + 64])
            assert counts[i].tolist() == np.bincount(labels[i].ravel(), minlength=3).tolist()
            covered[y : y + 64, x : x + 64] = True
        assert covered.all()
    lo, hi = np.percentile(image[0].astype(np.float64), [1.0, 99.8])
    assert np.allclose(norm[0].astype(np.float32), (image[0] - lo) / (hi - lo), atol=2e-3, rtol=2e-3)


def test_resume_after_kill_equals_uninterrupted_run(frames, tmp_path):
    ref = _content(_tiles(frames, tmp_path / "ref.h5"))

    def kill_after_2(k: int) -> None:
        if k == 2:
            raise KeyboardInterrupt

    out = tmp_path / "run.h5"
    with pytest.raises(KeyboardInterrupt):
        _tiles(frames, out, on_frame_done=kill_after_2)
    assert not out.exists() and partial_path(out).exists()
    with h5py.File(partial_path(out), "a") as f:  # a torn write of frame 3 beyond the flushed count
        assert f.attrs["frames_done"] == 3
        n = f["data"].shape[0]
        for name in ARRAYS:
            f[name].resize(n + 5, axis=0)
    done = []
    _tiles(frames, out, on_frame_done=done.append)
    assert done == [3, 4, 5]  # only the unfinished frames were tiled again
    got = _content(out)
    for key in (*ARRAYS, "frames", "groups"):
        assert np.array_equal(got[key], ref[key]), key
    assert got["attrs"] == ref["attrs"]
    assert _tiles(frames, out) == out  # a complete file for the same job is kept


@pytest.mark.slow
def test_process_pool_gives_same_file(frames, tmp_path):
    ref = _content(_tiles(frames, tmp_path / "a.h5"))
    got = _content(_tiles(frames, tmp_path / "b.h5", workers=2))
    for key in ARRAYS:
        assert np.array_equal(got[key], ref[key]), key


def test_split_by_well_is_seeded_and_leak_free(frames, tmp_path):
    out = _tiles(frames, tmp_path / "t.h5")
    paths = split_training(out, val_fraction=0.3, seed=3, progress=False)
    assert paths == {"train": tmp_path / "t_train.h5", "val": tmp_path / "t_val.h5"}
    full = _content(out)
    multi = np.flatnonzero((full["class_counts"] > 0).sum(1) >= 2)
    wells = {}
    seen = []
    for split, p in paths.items():
        c = _content(p)
        assert c["attrs"]["split"] == split and c["attrs"]["complete"]
        groups = np.array([g.decode() for g in c["groups"]])
        wells[split] = set(groups[c["source"][:, 0]])
        for i in range(len(c["data"])):  # each row is one multi-class row of the full file
            j = np.flatnonzero((full["source"] == c["source"][i]).all(1))[0]
            assert np.array_equal(c["data"][i], full["data"][j]) and np.array_equal(
                c["labels"][i], full["labels"][j]
            )
            seen.append(j)
    assert not wells["train"] & wells["val"] and wells["val"]
    assert sorted(seen) == multi.tolist()
    again = split_training(out, val_fraction=0.3, seed=3, progress=False)
    assert np.array_equal(_content(again["val"])["source"], _content(paths["val"])["source"])
    assert choose_val_groups({"a": 5, "b": 5, "c": 5}, 0.0, 0) == []
    assert len(choose_val_groups({"a": 5, "b": 5}, 0.9, 0)) == 1  # never all wells
    with pytest.raises(DataError, match="one well"):
        choose_val_groups({"a": 5}, 0.2, 0)


def _copy_frames(frames: Path, dst: Path) -> Path:
    for sub in ("images", "labels"):
        (dst / sub).mkdir(parents=True)
        for p in (frames / sub).glob("A1_*"):
            (dst / sub / p.name).write_bytes(p.read_bytes())
    return dst


@pytest.mark.parametrize("case", ["size", "labels", "tile", "missing", "corrupt"])
def test_bad_input_names_the_file_and_leaves_no_final_file(frames, tmp_path, case):
    root = _copy_frames(frames, tmp_path / "in")
    s = S
    if case == "size":
        bad = root / "images" / "A1_t01.tif"
        tifffile.imwrite(bad, np.zeros((2, 150, 200), np.uint16))
    elif case == "labels":
        bad = root / "labels" / "A1_t01_semantic.tif"
        tifffile.imwrite(bad, np.full((150, 230), 5, np.uint8))
    elif case == "tile":
        bad, s = root / "images" / "A1_t00.tif", TilingSettings(tile=200, stride=100)
    elif case == "missing":
        bad = root / "labels" / "A1_t01_semantic.tif"
        bad.unlink()
    else:
        bad = root / "images" / "A1_t01.tif"
        bad.write_bytes(b"II*\x00garbage")
    out = tmp_path / "t.h5"
    with pytest.raises(DataError, match=bad.name):
        tile_to_h5(discover_frames(root, "livedead"), out, s, workers=0, progress=False)
    assert not out.exists()


@pytest.mark.slow
def test_tool_end_to_end_and_exit_code(frames, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("UNET:\n  TILING:\n    TILE: 64\n    STRIDE: 32\n    VAL_FRACTION: 0.3\n    WORKERS: 0\n")
    out = tmp_path / "tiles.h5"
    cmd = [sys.executable, str(REPO / "tools/tile_h5.py"), "--config-file", str(cfg), "--frames", str(frames)]
    r = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert out.exists() and (tmp_path / "tiles_train.h5").exists() and (tmp_path / "tiles_val.h5").exists()
    r = subprocess.run(
        [*cmd, "--out", str(tmp_path / "o.h5"), "UNET.TILING.TILE", "999"], capture_output=True, text=True
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr and "larger than frame" in r.stderr
