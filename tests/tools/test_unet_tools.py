"""U-Net tools in-process: every user mistake is exit code 1 and one 'error:' line, no traceback;
a failed --overwrite keeps the earlier output; unchanged inputs are reused."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from _cli import expect_error, load_tool

from pcna_seg.config import load_config
from pcna_seg.data.synthetic.write_livedead import write as write_livedead
from pcna_seg.unet.models import build_unet
from pcna_seg.unet.tiling import run_tiling

ROOT = Path(__file__).resolve().parents[2]
TILING = ["UNET.TILING.TILE", "32", "UNET.TILING.STRIDE", "32", "UNET.TILING.WORKERS", "0"]
MODEL = ["MODEL.DEVICE", "cpu", "UNET.DEPTH", "1", "UNET.BASE_WIDTH", "2"]


def _tool(name: str):
    return load_tool(name)


def _fails(capsys, tool: str, argv: list[str], *match: str) -> str:
    return expect_error(capsys, tool, argv, *match)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("unet_tools")
    write_livedead(root / "frames", wells=("A1", "A2", "B1"), timepoints=1, height=64, width=64, density=2e-3)
    paths = run_tiling(load_config(opts=[*TILING, "UNET.TILING.VAL_FRACTION", "0.34"]), root / "frames",
                       root / "t.h5", progress=False)  # fmt: skip
    cfg = root / "unet.yaml"
    cfg.write_text(
        "UNET:\n  DEPTH: 1\n  BASE_WIDTH: 2\n  INFER:\n    TILE: 64\n    OVERLAP: 0\nMODEL:\n  DEVICE: cpu\n"
    )
    torch.save({"model": build_unet(load_config(cfg)).state_dict()}, root / "w.pth")
    wide = load_config(cfg, ["UNET.BASE_WIDTH", "4"])
    torch.save({"model": build_unet(wide).state_dict()}, root / "wide.pth")
    return {"root": root, "frames": root / "frames", "cfg": cfg, **paths}


# ----------------------------------------------------------------------------------- make_livedead
@pytest.mark.parametrize(
    "args, match",
    [
        (["--dead-fraction", "2.5"], "dead_fraction must be in [0, 1], got 2.5"),
        (["--timepoints", "0"], "timepoints must be >= 1, got 0"),
        (["--height", "0"], "height must be an integer >= 32 pixels, got 0"),
        (["--wells", "A1", "plate/B2"], "well name 'plate/B2' cannot be part of a file name"),
    ],
)
def test_make_livedead_bad_values(capsys, tmp_path: Path, args: list[str], match: str) -> None:
    _fails(capsys, "make_livedead", [str(tmp_path / "ld"), "--height", "64", "--width", "64", *args], match)
    assert not (tmp_path / "ld").exists()


# ---------------------------------------------------------------------------------------- tile_h5
def _tile_argv(frames: Path, out: Path, *extra: str) -> list[str]:
    return ["--frames", str(frames), "--out", str(out), *TILING, "UNET.TILING.VAL_FRACTION", "0.34", *extra]


def test_tile_h5_reuse_refusal_and_failed_overwrite(capsys, caplog, data, tmp_path: Path) -> None:
    frames = Path(shutil.copytree(data["frames"], tmp_path / "frames"))
    out = tmp_path / "t.h5"
    _tool("tile_h5").main(_tile_argv(frames, out))
    digests = {p.name: _digest(p) for p in tmp_path.glob("*.h5")}
    assert sorted(digests) == ["t.h5", "t_train.h5", "t_val.h5"]
    caplog.set_level(logging.INFO)
    _tool("tile_h5").main(_tile_argv(frames, out))  # unchanged: everything reused, with a log line
    assert caplog.text.count("reusing it") == 3
    lab = frames / "labels" / "A1_t00_semantic.tif"
    arr = tifffile.imread(lab)
    arr[:8, :8] = 0
    tifffile.imwrite(lab, arr)
    _fails(
        capsys,
        "tile_h5",
        _tile_argv(frames, out),
        "t.h5 is from another job",
        lab.name,
        "changed",
        "--overwrite",
    )
    img = frames / "images" / "B1_t00.tif"
    img.write_bytes(img.read_bytes()[:700])
    _fails(capsys, "tile_h5", _tile_argv(frames, out, "--overwrite"), img.name, "truncated")
    assert {p.name: _digest(p) for p in tmp_path.glob("*.h5")} == digests  # nothing lost


def test_tile_h5_leftover_is_removed(capsys, caplog, data, tmp_path: Path) -> None:
    left = tmp_path / ".t_train.a8f3k2.tmp.h5"
    left.write_bytes(b"\0" * 4096)
    caplog.set_level(logging.INFO)
    _tool("tile_h5").main(_tile_argv(data["frames"], tmp_path / "t.h5", "--no-split"))
    assert not left.exists() and "left by an interrupted run" in caplog.text


# -------------------------------------------------------------------------------------- train_unet
def _train_argv(data, out: Path, *extra: str) -> list[str]:
    return ["--config-file", str(data["cfg"]), *TILING, "OUTPUT_DIR", str(out), "UNET.DATA.TRAIN_H5",
            str(data["train"]), "UNET.DATA.VAL_H5", str(data["val"]), "UNET.DATA.NUM_WORKERS", "0",
            "UNET.SOLVER.EPOCHS", "1", *extra]  # fmt: skip


def test_train_unet_refuses_a_used_folder(capsys, data, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}\n")
    _fails(
        capsys,
        "train_unet",
        _train_argv(data, out),
        f"Output folder {out} is not empty",
        "--resume",
        "--overwrite",
    )
    assert (out / "metrics.json").read_text() == "{}\n"


def test_train_unet_resume_with_other_weights_is_one_line(capsys, data, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    wide = torch.load(data["root"] / "wide.pth", weights_only=True)  # a checkpoint of another config
    torch.save({"model": wide.get("model", wide), "iteration": 0, "epoch": 1}, out / "model_0000000.pth")
    (out / "last_checkpoint").write_text("model_0000000.pth")
    _fails(capsys, "train_unet", [*_train_argv(data, out), "--resume"],
           "do not fit the config: down.0.0.weight is (4, 2, 3, 3) in the file but (2, 2, 3, 3) in the model",
           "UNET.BASE_WIDTH", "other tensors differ")  # fmt: skip


# ------------------------------------------------------------------------------------ predict_unet
def _pred_argv(data, inputs: str, out: Path, weights: str = "w.pth", *extra: str) -> list[str]:
    w = str(data["root"] / weights)
    return [
        "--config-file",
        str(data["cfg"]),
        "--weights",
        w,
        "--input",
        inputs,
        "--output",
        str(out),
        *extra,
    ]


def test_predict_unet_mistakes(capsys, data, tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "w1_hoechst.tif", np.zeros((64, 64), np.uint16))
    tifffile.imwrite(tmp_path / "w1_draq7.tif", np.zeros((64, 48), np.uint16))
    pattern = str(tmp_path / "*_{channel}.tif")
    _fails(capsys, "predict_unet", _pred_argv(data, pattern, tmp_path / "p1"),
           "w1_hoechst.tif is (64, 64)", "w1_draq7.tif is (64, 48)")  # fmt: skip
    assert not (tmp_path / "p1").exists()
    _fails(capsys, "predict_unet", _pred_argv(data, str(data["frames"]), tmp_path / "p2", "wide.pth"),
           "wide.pth do not fit the config: down.0.0.weight is (4, 2, 3, 3)")  # fmt: skip
    out = tmp_path / "p3"
    _tool("predict_unet").main(_pred_argv(data, str(data["frames"]), out))
    csv_before = (out / "counts.csv").read_text()
    _fails(
        capsys,
        "predict_unet",
        _pred_argv(data, str(data["frames"]), out),
        f"{out} is not empty",
        "--overwrite",
    )
    assert (out / "counts.csv").read_text() == csv_before
    _tool("predict_unet").main([*_pred_argv(data, str(data["frames"]), out), "--overwrite"])
    assert (out / "counts.csv").read_text() == csv_before


# ------------------------------------------------------------------------- inputs are never outputs
def test_inputs_are_protected_and_splits_cannot_leak(capsys, data, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    shutil.copytree(data["frames"], frames)
    before = sorted(p.name for p in frames.rglob("*"))
    for out in (frames, tmp_path):  # the input folder itself, or a folder holding it
        _fails(
            capsys,
            "predict_unet",
            [*_pred_argv(data, str(frames), out), "--overwrite"],
            "is or holds the input",
        )
    assert sorted(p.name for p in frames.rglob("*")) == before
    _fails(capsys, "tile_h5", ["--config-file", str(data["cfg"]), "--frames", str(frames), "--out",
                               str(tmp_path / "t.h5"), "--workers", "-1", *TILING], "--workers")  # fmt: skip
    leaks = [
        (["UNET.DATA.VAL_H5", str(data["train"])], "are the same file"),
        (["UNET.DATA.TRAIN_H5", str(data["val"]), "UNET.DATA.VAL_H5", "''"], "is a validation split"),
        (["UNET.DATA.TRAIN_H5", str(data["tiles"])], "holds every tile"),
    ]
    for extra, match in leaks:
        _fails(capsys, "train_unet", _train_argv(data, tmp_path / "run", *extra), match)
    assert not (tmp_path / "run").exists()


def test_make_livedead_follows_the_output_folder_rule(capsys, tmp_path: Path) -> None:
    out, small = tmp_path / "ld", ["--height", "64", "--width", "64", "--timepoints", "1"]
    _tool("make_livedead").main([str(out), *small])
    before = sorted(p.name for p in out.rglob("*"))
    _fails(capsys, "make_livedead", [str(out), *small], "is not empty", "--overwrite")
    _fails(capsys, "make_livedead", [str(tmp_path / "new"), *small, "--dead-fraction", "3"], "dead_fraction")
    assert not (tmp_path / "new").exists()  # a refused run leaves nothing
    _tool("make_livedead").main([str(out), *small, "--wells", "C1", "--overwrite"])
    assert sorted(p.name for p in out.rglob("*")) != before and not list(
        out.rglob("A1*")
    )  # replaced, not mixed
