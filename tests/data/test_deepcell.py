"""DeepCell converters (.npz frame stacks, tracked .trks/.trk movies) against synthetic data."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _roundtrip import assert_roundtrip, assert_split_leak_free
from pycocotools.coco import COCO

from pcna_seg.data.converters import get_converter
from pcna_seg.data.converters.deepcell import convert_npz, convert_trks, read_trks
from pcna_seg.data.structures import rle_to_mask
from pcna_seg.data.synthetic import get_writer
from pcna_seg.data.synthetic.write_deepcell import write_npz, write_trks
from pcna_seg.errors import ConfigError, DataError


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


def _assert_fails(src: Path, out: Path, convert, name: str, **opts) -> str:
    """Conversion raises DataError naming ``name`` and leaves no annotations.json behind."""
    with pytest.raises(DataError) as info:
        convert(src, out, progress=False, **opts)
    assert name in str(info.value)
    assert not (out / "annotations.json").exists()
    return str(info.value)


def _good_xy(n: int = 2, h: int = 32, w: int = 32) -> tuple[np.ndarray, np.ndarray]:
    y = np.zeros((n, h, w, 1), dtype=np.int32)
    y[:, 4:12, 4:12] = 1
    return np.ones((n, h, w, 1), dtype=np.float32), y


def test_registered() -> None:
    assert get_converter("deepcell_npz") is convert_npz
    assert get_converter("deepcell_trks") is convert_trks
    assert get_writer("deepcell_npz") is write_npz
    assert get_writer("deepcell_trks") is write_trks


# --------------------------------------------------------------------------------------------- npz
def test_npz_roundtrip_float(tmp_path: Path) -> None:
    gt = write_npz(tmp_path / "src", seed=1, n_images=8, frames_per_movie=4)
    assert any(g.labels.max() == 0 for g in gt.images), "writer must include a blank frame"
    card = convert_npz(tmp_path / "src", tmp_path / "out", frames_per_movie=4, progress=False)
    assert_roundtrip(gt, tmp_path / "out")
    assert card["images"] == 8 and card["sequences"] == 2 and card["split"]["by"] == "sequence"
    assert card["dtypes"] == {"float32": 8} and card["blank_images"] == 1
    x = np.load(tmp_path / "src" / "nuclear.npz")["X"]
    img = tifffile.imread(tmp_path / "out" / "images" / "nuclear_00005.tif")
    assert img.dtype == np.float32 and np.array_equal(img, x[5, ..., 0])


def test_npz_channel_and_uint16(tmp_path: Path) -> None:
    gt = write_npz(tmp_path / "src", seed=2, n_images=4, frames_per_movie=2, n_channels=2, dtype="uint16")
    convert_npz(tmp_path / "src", tmp_path / "out", channel=1, frames_per_movie=2, progress=False)
    assert_roundtrip(gt, tmp_path / "out")
    x = np.load(tmp_path / "src" / "nuclear.npz")["X"]
    img = tifffile.imread(tmp_path / "out" / "images" / "nuclear_00003.tif")
    assert img.dtype == np.uint16 and np.array_equal(img, x[3, ..., 1])
    with pytest.raises(ConfigError, match="channel=2"):
        convert_npz(tmp_path / "src", tmp_path / "out2", channel=2, progress=False)


def test_npz_movies_never_leak(tmp_path: Path) -> None:
    """Frames of one movie are never in both train and val, whatever the seed."""
    write_npz(tmp_path / "src", seed=3, n_images=16, frames_per_movie=2, height=64, width=64, n_nuclei=4)
    for seed in range(4):
        out = tmp_path / f"out{seed}"
        card = convert_npz(tmp_path / "src", out, frames_per_movie=2, seed=seed, progress=False)
        assert card["split"]["val"] > 0 and card["split"]["val"] % 2 == 0
        assert_split_leak_free(out)
        split = json.loads((out / "split.json").read_text())
        movies = {name: {int(i.rsplit("_", 1)[1]) // 2 for i in split[name]} for name in ("train", "val")}
        assert not movies["train"] & movies["val"]


def test_npz_without_movies_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_npz(tmp_path / "src", seed=4, n_images=4, frames_per_movie=2, height=64, width=64)
    with caplog.at_level(logging.WARNING):
        card = convert_npz(tmp_path / "src", tmp_path / "out", progress=False)
    assert card["split"]["by"] == "image"
    assert any("frames_per_movie" in n and n.startswith("WARNING") for n in card["notes"])
    assert any("optimistic" in r.getMessage() for r in caplog.records)
    coco = COCO(str(tmp_path / "out" / "annotations.json"))
    assert all("sequence" not in im for im in coco.dataset["images"])


def test_npz_3d_arrays_other_keys_and_movie_key(tmp_path: Path) -> None:
    gt = write_npz(tmp_path / "w", seed=5, n_images=4, frames_per_movie=2, height=64, width=64)
    data = np.load(tmp_path / "w" / "nuclear.npz")
    src = tmp_path / "src"
    src.mkdir()
    np.savez(
        src / "nuclear.npz",
        raw=data["X"][..., 0],
        annotated=data["y"][..., 0],
        movie=np.array([0, 0, 1, 1]),
        meta=np.arange(3),
    )
    card = convert_npz(
        src, tmp_path / "out", x_key="raw", y_key="annotated", movie_key="movie", progress=False
    )
    assert_roundtrip(gt, tmp_path / "out")
    assert card["split"]["by"] == "sequence"
    msg = _assert_fails(src, tmp_path / "out2", convert_npz, "nuclear.npz")
    assert "'X'" in msg and "annotated" in msg  # lists the arrays present


def test_npz_frames_per_movie_must_divide(tmp_path: Path) -> None:
    write_npz(tmp_path / "src", seed=6, n_images=4, frames_per_movie=2, height=64, width=64)
    with pytest.raises(ConfigError, match="frames_per_movie=3"):
        convert_npz(tmp_path / "src", tmp_path / "out", frames_per_movie=3, progress=False)
    assert not (tmp_path / "out" / "annotations.json").exists()


def test_npz_shape_mismatch(tmp_path: Path) -> None:
    x, y = _good_xy()
    path = _npz(tmp_path, X=x, y=y[:, :, :30])
    msg = _assert_fails(path, tmp_path / "out", convert_npz, "bad.npz")
    assert "(2, 32, 30, 1)" in msg


@pytest.mark.parametrize("bad_value", [np.nan, 1.5])
def test_npz_labels_nan_or_fractional(tmp_path: Path, bad_value: float) -> None:
    x, y = _good_xy()
    y = y.astype(np.float32)
    y[1, 20, 20, 0] = bad_value
    msg = _assert_fails(_npz(tmp_path, X=x, y=y), tmp_path / "out", convert_npz, "bad.npz")
    assert "[y][1]" in msg


def test_npz_nan_pixels_and_corrupt_file(tmp_path: Path) -> None:
    x, y = _good_xy()
    x[0, 3, 3, 0] = np.nan
    _assert_fails(_npz(tmp_path, X=x, y=y), tmp_path / "out", convert_npz, "bad.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip archive")
    _assert_fails(corrupt, tmp_path / "out2", convert_npz, "corrupt.npz")
    _assert_fails(tmp_path / "missing.npz", tmp_path / "out3", convert_npz, "missing.npz")


# -------------------------------------------------------------------------------------------- trks
def _check_tracks(gt, out: Path) -> None:
    """Every annotation's track_id is the ground-truth label (= track id) under its mask."""
    coco = COCO(str(out / "annotations.json"))
    by_key = gt.by_key()
    for ann in coco.dataset["annotations"]:
        labels = by_key[ann["image_id"]].labels
        ids = np.unique(labels[rle_to_mask(ann["segmentation"])])
        assert ids.tolist() == [ann["track_id"]]


def test_trks_roundtrip_tracks_and_padding(tmp_path: Path) -> None:
    gt = write_trks(tmp_path / "src", seed=7, n_images=5, n_batches=2, pad_frames=1)
    assert len(gt.images) == 9
    card = convert_trks(tmp_path / "src" / "tracked.trks", tmp_path / "out", progress=False)
    assert_roundtrip(gt, tmp_path / "out")
    _check_tracks(gt, tmp_path / "out")
    assert card["sequences"] == 2 and any("1 all-zero padding" in n for n in card["notes"])
    assert card["blank_images"] == 1
    tracks = json.loads((tmp_path / "out" / "tracks.json").read_text())
    assert set(tracks) == {"tracked_b0", "tracked_b1"}
    divisions = [(k, v) for k, v in tracks["tracked_b1"].items() if v["daughters"]]
    assert divisions, "the synthetic movie has a division"
    parent, entry = divisions[0]
    for d in entry["daughters"]:
        assert tracks["tracked_b1"][str(d)]["parent"] == int(parent)


def test_trk_single_and_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    gt_a = write_trks(src, seed=8, n_images=3, single=True, name="one", height=64, width=64, dtype="float32")
    gt_b = write_trks(src, seed=9, n_images=3, n_batches=2, name="two", height=64, width=64)
    raw, tracked, lineages = read_trks(src / "one.trk")
    assert raw.shape == (1, 3, 64, 64, 1) and tracked.shape == raw.shape and len(lineages) == 1
    card = convert_trks(src, tmp_path / "out", progress=False)
    assert card["dtypes"] == {"float32": 3, "uint16": 5}
    gt_a.images += gt_b.images
    assert_roundtrip(gt_a, tmp_path / "out")
    _check_tracks(gt_a, tmp_path / "out")


def _tar(path: Path, members: dict[str, np.ndarray | bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, value in members.items():
            if isinstance(value, np.ndarray):
                buf = io.BytesIO()
                np.save(buf, value)
                value = buf.getvalue()
            info = tarfile.TarInfo(name)
            info.size = len(value)
            tar.addfile(info, io.BytesIO(value))
    return path


def test_trks_corrupt_and_incomplete(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.trks"
    corrupt.write_bytes(b"\x00garbage" * 100)
    _assert_fails(corrupt, tmp_path / "o1", convert_trks, "corrupt.trks")
    raw = np.ones((1, 2, 16, 16, 1), dtype=np.float32)
    lin = json.dumps([{}]).encode()
    no_tracked = _tar(tmp_path / "no_tracked.trks", {"raw.npy": raw, "lineages.json": lin})
    msg = _assert_fails(no_tracked, tmp_path / "o2", convert_trks, "no_tracked.trks")
    assert "tracked.npy" in msg
    tracked = np.zeros((1, 2, 16, 15, 1), dtype=np.int32)
    mismatch = _tar(
        tmp_path / "mismatch.trks", {"raw.npy": raw, "tracked.npy": tracked, "lineages.json": lin}
    )
    assert "(1, 2, 16, 15, 1)" in _assert_fails(mismatch, tmp_path / "o3", convert_trks, "mismatch.trks")
    tracked = np.zeros((1, 2, 16, 16, 1), dtype=np.float32)
    tracked[0, 1, 2, 2, 0] = np.nan
    nan = _tar(tmp_path / "nan.trks", {"raw.npy": raw, "tracked.npy": tracked, "lineages.json": lin})
    assert "NaN" in _assert_fails(nan, tmp_path / "o4", convert_trks, "nan.trks")
    two = json.dumps([{}, {}]).encode()
    ok = np.zeros((1, 2, 16, 16, 1), dtype=np.int32)
    lineage = _tar(tmp_path / "lin.trks", {"raw.npy": raw, "tracked.npy": ok, "lineages.json": two})
    assert "2 lineage entries for 1 movies" in _assert_fails(
        lineage, tmp_path / "o5", convert_trks, "lin.trks"
    )
