"""Safe U-Net outputs: no lost data, no stale reuse, output folders, leftovers, clear messages."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
import yaml
from torch.utils.data import DataLoader

from pcna_seg.config import load_config
from pcna_seg.data.synthetic.write_livedead import check_args
from pcna_seg.data.synthetic.write_livedead import write as write_livedead
from pcna_seg.errors import ConfigError, DataError, OutputExistsError, PcnaSegError, WeightsError
from pcna_seg.unet import tile_split
from pcna_seg.unet.models import build_unet, load_unet_state
from pcna_seg.unet.predict import find_frames, predict_unet, read_frame
from pcna_seg.unet.tile_split import split_training
from pcna_seg.unet.tiling import TilingSettings, discover_frames, partial_path, run_tiling, tile_to_h5
from pcna_seg.unet.train import train_unet

REPO = Path(__file__).resolve().parents[2]
S = TilingSettings(tile=32, stride=32, chunk_tiles=8)
TILING = ["UNET.TILING.TILE", "32", "UNET.TILING.STRIDE", "32", "UNET.TILING.WORKERS", "0"]


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ld") / "frames"
    write_livedead(root, wells=("A1", "A2", "B1"), timepoints=1, height=64, width=64, density=2e-3)
    return root


@pytest.fixture()
def own_frames(frames: Path, tmp_path: Path) -> Path:
    """A copy the test may edit."""
    return Path(shutil.copytree(frames, tmp_path / "frames"))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tile(root: Path, out: Path, s: TilingSettings = S, **kw) -> Path:
    return tile_to_h5(discover_frames(root), out, s, workers=0, progress=False, **kw)


def _edit_label(root: Path, name: str = "A2_t00_semantic.tif") -> Path:
    lab = root / "labels" / name
    arr = tifffile.imread(lab)
    arr[:4, :4] = 0
    tifffile.imwrite(lab, arr)
    os.utime(lab, ns=(lab.stat().st_atime_ns, lab.stat().st_mtime_ns + 10**9))
    return lab


# ---------------------------------------------------------------------------------------- tiling
@pytest.mark.parametrize("case", ["corrupt_header", "bad_labels"])
def test_failed_overwrite_keeps_the_complete_file(own_frames: Path, tmp_path: Path, case: str) -> None:
    """--overwrite validates first and builds aside: a job failing early (corrupt frame header)
    or late (label values found while tiling) leaves the earlier complete file byte-identical."""
    out = _tile(own_frames, tmp_path / "t.h5")
    before = _digest(out)
    if case == "corrupt_header":
        bad = own_frames / "images" / "A2_t00.tif"
        bad.write_bytes(b"II*\x00garbage")
    else:
        bad = own_frames / "labels" / "B1_t00_semantic.tif"
        tifffile.imwrite(bad, np.full((64, 64), 7, np.uint8))
    with pytest.raises(DataError, match=bad.name):
        _tile(own_frames, out, overwrite=True)
    assert _digest(out) == before


def test_edited_label_is_refused_with_the_reason_and_unchanged_is_reused(
    own_frames: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = _tile(own_frames, tmp_path / "t.h5")
    caplog.set_level(logging.INFO)
    assert _tile(own_frames, out) == out
    assert "reusing it" in caplog.text and "unchanged input files" in caplog.text
    with pytest.raises(OutputExistsError, match=r"setting tile 32 -> 64 \(UNET.TILING.TILE\).*--overwrite"):
        _tile(own_frames, out, TilingSettings(tile=64, stride=32, chunk_tiles=8))
    lab = _edit_label(own_frames)
    with pytest.raises(OutputExistsError, match=rf"input .*{lab.name} changed.*--overwrite"):
        _tile(own_frames, out)
    before = _digest(out)
    _tile(own_frames, out, overwrite=True)
    assert _digest(out) != before
    assert _tile(own_frames, out) == out  # the rebuilt file records the edited label


def test_partial_file_of_another_job_is_started_over(
    own_frames: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def kill_after_1(k: int) -> None:
        if k == 1:
            raise KeyboardInterrupt

    out = tmp_path / "t.h5"
    with pytest.raises(KeyboardInterrupt):
        _tile(own_frames, out, on_frame_done=kill_after_1)
    assert partial_path(out).exists()
    lab = _edit_label(own_frames, "A1_t00_semantic.tif")
    caplog.set_level(logging.INFO)
    done: list[int] = []
    _tile(own_frames, out, on_frame_done=done.append)
    assert done == [0, 1, 2]  # not resumed: frame 0's tiles were made from the old label file
    assert "from another job" in caplog.text and lab.name in caplog.text


def test_split_reuse_refusal_and_failed_overwrite(frames: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = load_config(opts=[*TILING, "UNET.TILING.VAL_FRACTION", "0.34"])
    paths = run_tiling(cfg, frames, tmp_path / "t.h5", progress=False)
    digests = {k: _digest(p) for k, p in paths.items()}
    again = run_tiling(cfg, frames, tmp_path / "t.h5", progress=False)  # everything reused
    assert {k: _digest(p) for k, p in again.items()} == digests
    cfg2 = load_config(opts=[*TILING, "UNET.TILING.VAL_FRACTION", "0.5"])
    with pytest.raises(
        OutputExistsError, match=r"t_train.h5.*val_fraction 0.34 -> 0.5 \(UNET.TILING.VAL_FRACTION\)"
    ):
        run_tiling(cfg2, frames, tmp_path / "t.h5", progress=False)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(tile_split, "append_tiles", boom)
    with pytest.raises(OSError, match="disk full"):
        split_training(paths["tiles"], 0.5, 0, progress=False, overwrite=True)
    assert {k: _digest(p) for k, p in paths.items()} == digests  # old pair intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    monkeypatch.undo()
    # --overwrite rebuilds only what another job made: the unchanged pass-1 file is kept
    new = run_tiling(cfg2, frames, tmp_path / "t.h5", overwrite=True, progress=False)
    assert _digest(new["tiles"]) == digests["tiles"]
    assert _digest(new["train"]) != digests["train"]
    with h5py.File(new["train"], "r") as f:
        assert f.attrs["complete"] and json.loads(f["job"][()])["val_fraction"] == 0.5


def test_leftovers_of_killed_runs_are_removed(frames: Path, tmp_path: Path, caplog) -> None:
    tmp = tmp_path / ".t_train.k2j4h1.tmp.h5"
    tmp.write_bytes(b"\0" * 1000)
    caplog.set_level(logging.INFO)
    _tile(frames, tmp_path / "t.h5")
    assert not tmp.exists() and "left by an interrupted run" in caplog.text


def test_truncated_tiff_is_named_as_truncated(own_frames: Path, tmp_path: Path) -> None:
    img = own_frames / "images" / "A1_t00.tif"
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{img.name} is truncated"):
        _tile(own_frames, tmp_path / "t.h5")


# --------------------------------------------------------------------------------------- trainer
def _tiles_ds(n: int, seed: int) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 3, (n, 16, 16), generator=g)
    images = torch.stack([(targets > 0).float(), (targets == 2).float()], 1) + 0.1
    return torch.utils.data.TensorDataset(images, targets)


def _loaders(nan: bool = False) -> tuple[DataLoader, DataLoader]:
    train = _tiles_ds(8, 0)
    if nan:
        train.tensors[0][0, 0, 0, 0] = float("nan")
    return DataLoader(train, batch_size=8), DataLoader(_tiles_ds(4, 1), batch_size=4)


TRAIN_OPTS = [
    "MODEL.DEVICE", "cpu", "SEED", "0", "UNET.DEPTH", "1", "UNET.BASE_WIDTH", "2",
    "UNET.LOSS.CLASS_WEIGHTS", "[1.0, 1.0, 1.0]", "UNET.EVAL.PR_THRESHOLDS", "5",
    "UNET.EVAL.OVERLAY_TILES", "2",
]  # fmt: skip


def _train_cfg(out: Path, epochs: int = 1):
    return load_config(opts=["OUTPUT_DIR", str(out), *TRAIN_OPTS, "UNET.SOLVER.EPOCHS", str(epochs)])


def test_train_output_folder_rule(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    train_unet(_train_cfg(out, 2), loaders=_loaders())
    (out / "stale.txt").write_text("from an older run")
    with pytest.raises(OutputExistsError, match="--resume.*--overwrite"):
        train_unet(_train_cfg(out), loaders=_loaders())
    before = (out / "metrics.json").read_text()
    with pytest.raises(PcnaSegError, match="BASE_LR"):  # a failing --overwrite run changes nothing
        train_unet(_train_cfg(out), loaders=_loaders(nan=True), overwrite=True)
    assert (out / "metrics.json").read_text() == before and (out / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    summary = train_unet(_train_cfg(out), loaders=_loaders(), overwrite=True)
    assert not (out / "stale.txt").exists() and summary["epochs"] == 1
    assert len((out / "metrics.json").read_text().splitlines()) == 1
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["epoch_0001.png"]
    assert yaml.safe_load((out / "config.yaml").read_text())["OUTPUT_DIR"] == str(out)
    ck = torch.load(out / "model_final.pth", weights_only=True)
    assert f"OUTPUT_DIR: {out}" in ck["config"] and summary["video"].startswith(str(out))
    # --resume without a checkpoint starts fresh (log line); a killed write's tmp file is removed
    for p in (out / "model_final.pth", out / "model_best.pth", out / "last_checkpoint"):
        p.unlink()
    (out / ".model_final.x1y2z3.tmp.pth").write_bytes(b"\0" * 100)
    caplog.set_level(logging.INFO)
    assert train_unet(_train_cfg(out), loaders=_loaders(), resume=True)["epochs"] == 1
    assert "starting a new run" in caplog.text and "left by an interrupted run" in caplog.text
    assert not (out / ".model_final.x1y2z3.tmp.pth").exists()


def test_weight_mismatch_is_one_line_naming_layer_and_shapes() -> None:
    def model(*opts: str):
        return build_unet(load_config(opts=["UNET.DEPTH", "2", "UNET.BASE_WIDTH", "4", *opts]))

    cases = [
        (
            ("UNET.BASE_WIDTH", "8"),
            r"down.0.0.weight is \(8, 2, 3, 3\) in the file but \(4, 2, 3, 3\)",
            "BASE_WIDTH",
        ),
        (
            ("UNET.CHANNELS", "['a', 'b', 'c']"),
            r"is \(4, 3, 3, 3\) in the file but \(4, 2, 3, 3\)",
            "CHANNELS",
        ),
        (
            ("UNET.MODE", "count"),
            r"head.0.weight is \(1, 4, 1, 1\) in the file but \(3, 4, 1, 1\)",
            "CLASSES",
        ),
        (("UNET.DEPTH", "3"), r"is not in the model", "DEPTH"),
    ]
    for opts, shapes, key in cases:
        with pytest.raises(WeightsError) as info:
            load_unet_state(model(), model(*opts).state_dict(), "w.pth")
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith("UNet weights w.pth do not fit the config: "), msg
        assert key in msg and re.search(shapes, msg), msg
    with pytest.raises(WeightsError, match=r"and \d+ other tensors differ"):
        load_unet_state(model(), model("UNET.BASE_WIDTH", "8").state_dict(), "w.pth")


# ------------------------------------------------------------------------------------ prediction
def test_predict_output_folder_is_refused_then_replaced_whole(frames: Path, tmp_path: Path) -> None:
    cfg = load_config(opts=["MODEL.DEVICE", "cpu", "UNET.DEPTH", "1", "UNET.BASE_WIDTH", "2",
                            "UNET.INFER.TILE", "64", "UNET.INFER.OVERLAP", "0"])  # fmt: skip
    torch.save({"model": build_unet(cfg).state_dict()}, tmp_path / "w.pth")
    out = tmp_path / "pred"
    predict_unet(cfg, str(frames), out, str(tmp_path / "w.pth"))
    (out / "Z9_t00_labels.tif").write_bytes(b"an older run's frame")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        predict_unet(cfg, str(frames), out, str(tmp_path / "w.pth"))
    rows = predict_unet(cfg, str(frames), out, str(tmp_path / "w.pth"), overwrite=True)
    labels = sorted(p.name for p in out.glob("*_labels.tif"))
    assert labels == [f"{r['frame']}_labels.tif" for r in rows]  # nothing the CSV does not list


def test_channel_files_of_different_sizes(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "w1_hoechst.tif", np.zeros((8, 8), np.uint16))
    tifffile.imwrite(tmp_path / "w1_draq7.tif", np.zeros((8, 10), np.uint16))
    frames = find_frames(str(tmp_path / "*_{channel}.tif"), ["hoechst", "draq7"])
    with pytest.raises(DataError, match=r"w1_hoechst.tif is \(1, 8, 8\) but .*w1_draq7.tif is \(1, 8, 10\)"):
        read_frame(frames[0], 2)


# ---------------------------------------------------------------------------- synthetic frames
@pytest.mark.parametrize(
    "kw, match",
    [
        ({"dead_fraction": 2.5}, "dead_fraction must be in"),
        ({"timepoints": 0}, "timepoints must be >= 1"),
        ({"height": 0}, "height must be an integer >= 32"),
        ({"width": 10}, "width must be"),
        ({"wells": ["A/1"]}, "well name 'A/1' cannot be part of a file name"),
        ({"wells": ["A1", "A1"]}, "repeat"),
        ({"wells": []}, "non-empty"),
        ({"density": -1.0}, "density"),
    ],
)
def test_write_livedead_rejects_bad_arguments(kw: dict, match: str, tmp_path: Path) -> None:
    args = dict(wells=["A1"], timepoints=1, height=64, width=64, density=6e-4, dead_fraction=0.3)
    args.update(kw)
    with pytest.raises(ConfigError, match=match):
        check_args(**args)
    with pytest.raises(ConfigError, match=match):
        write_livedead(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------- real kill -9
def _run_and_kill(script: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr


@pytest.mark.slow
def test_kill_9_during_split_leaves_hidden_tmp_that_the_next_run_removes(frames, tmp_path, caplog) -> None:
    out = tmp_path / "t.h5"
    opts = [*TILING, "UNET.TILING.VAL_FRACTION", "0.34"]
    _run_and_kill(f"""
import os, signal
from pcna_seg.config import load_config
from pcna_seg.unet import tile_split
from pcna_seg.unet.tiling import run_tiling
real = tile_split.append_tiles
def dying(f, arrays):
    real(f, arrays)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
tile_split.append_tiles = dying
run_tiling(load_config(opts={opts!r}), {str(frames)!r}, {str(out)!r}, progress=False)
""")
    left = sorted(tmp_path.glob(".t_*.tmp.h5"))
    assert len(left) == 2 and out.exists() and not (tmp_path / "t_train.h5").exists()
    caplog.set_level(logging.INFO)
    paths = run_tiling(load_config(opts=opts), frames, out, progress=False)
    assert not any(p.exists() for p in left) and caplog.text.count("left by an interrupted run") == 2
    assert "reusing it" in caplog.text  # pass 1 was complete before the kill
    with h5py.File(paths["train"], "r") as f:
        assert f.attrs["complete"] and f["data"].shape[0] > 0


@pytest.mark.slow
def test_kill_9_during_checkpoint_write_then_resume(tmp_path, caplog) -> None:
    out = tmp_path / "run"
    _run_and_kill(f"""
import os, signal, torch
from torch.utils.data import DataLoader, TensorDataset
from pcna_seg.config import load_config
from pcna_seg.unet import train
def dying_save(obj, path):
    with open(path, "wb") as fh:
        fh.write(b"half a checkpoint")
    os.kill(os.getpid(), signal.SIGKILL)
train.torch.save = dying_save
t = torch.randint(0, 3, (8, 16, 16), generator=torch.Generator().manual_seed(0))
x = torch.stack([(t > 0).float(), (t == 2).float()], 1)
ds = TensorDataset(x, t)
cfg = load_config(opts={["OUTPUT_DIR", str(out), *TRAIN_OPTS, "UNET.SOLVER.EPOCHS", "1"]!r})
train.train_unet(cfg, loaders=(DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8)))
""")
    left = sorted(out.glob(".*.tmp.pth"))
    assert len(left) == 1 and not (out / "last_checkpoint").exists()
    caplog.set_level(logging.INFO)
    summary = train_unet(_train_cfg(out), loaders=_loaders(), resume=True)
    assert summary["epochs"] == 1 and not left[0].exists()
    assert "left by an interrupted run" in caplog.text and "starting a new run" in caplog.text
    assert torch.load(out / "model_final.pth", weights_only=True)["epoch"] == 1
