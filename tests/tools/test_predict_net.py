"""tools/predict_net.py: outputs for PCNA movies / datasets, and one-line errors with exit code 1."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from _cli import expect_error, load_tool

ROOT = Path(__file__).resolve().parents[2]
CFG = ROOT / "configs/quick_schedules/quick_stage3_pcna.yaml"
NAMES = ["G1/G2", "S", "M"]


def _tool():
    return load_tool("predict_net")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny checkpoint (+ config.yaml), PCNA movies and their prepared dataset."""
    from pcna_seg.config.config import load_config, save_config
    from pcna_seg.data.converters.pcna import convert_masks
    from pcna_seg.data.synthetic.write_pcna import write_masks
    from pcna_seg.modeling import build_model

    root = tmp_path_factory.mktemp("predict_net")
    cfg = load_config(CFG, ["MODEL.DEVICE", "cpu", "TEST.DETECTIONS_PER_IMAGE", "20"])
    torch.manual_seed(0)
    model = build_model(cfg)
    (root / "run").mkdir()
    torch.save(
        {"model": model.state_dict(), "config": cfg.dump(), "class_names": NAMES}, root / "run/model.pth"
    )
    save_config(cfg, root / "run/config.yaml")
    write_masks(root / "movies", seed=0, n_movies=1, n_frames=2, height=64, width=72, n_nuclei=4)
    convert_masks(root / "movies", root / "prepared", val_fraction=0.5, progress=False)
    (root / "no_dic").mkdir()
    for p in (root / "movies").glob("*mcy*"):
        (root / "no_dic" / p.name).write_bytes(p.read_bytes())
    return root


def _argv(env: Path, inp: str | Path, out: Path, *extra: str) -> list[str]:
    return [
        "--weights",
        str(env / "run/model.pth"),
        "--input",
        str(inp),
        "--output",
        str(out),
        "--no-progress",
        *extra,
    ]


def _fails(capsys, argv: list[str], match: str) -> str:
    return expect_error(capsys, "predict_net", argv, match)


@pytest.mark.slow
def test_predicts_every_movie_frame(env: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pred"
    _tool().main(_argv(env, env / "movies", out, "--score-thresh", "0.0"))
    printed = capsys.readouterr().out
    assert "total" in printed and "G1/G2" in printed
    labels = sorted(out.glob("*_labels.tif"))
    assert [p.name for p in labels] == ["mcf10a_s01_0000_labels.tif", "mcf10a_s01_0001_labels.tif"]
    assert len(list(out.glob("*_overlay.png"))) == 2
    n_objects = 0
    for p in labels:
        lab = tifffile.imread(p)
        assert lab.shape == (64, 72) and lab.dtype == np.uint16
        n_objects += len(np.unique(lab[lab > 0]))
    with open(out / "objects.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n_objects > 0
    assert {r["phase"] for r in rows} <= set(NAMES)
    assert not list(out.glob(".*tmp*"))  # no temporary leftovers


@pytest.mark.slow
def test_dataset_json_and_tiling(env: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    _tool().main(
        _argv(env, env / "prepared/val.json", out, "--tile", "48", "--overlap", "16", "--score-thresh", "0")
    )
    n_images = len(json.loads((env / "prepared/val.json").read_text())["images"])
    assert len(list(out.glob("*_labels.tif"))) == n_images > 0 and (out / "objects.csv").is_file()


def test_bad_inputs_exit_1_and_write_nothing(env: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pred"
    argv = _argv(env, env / "movies", out)
    argv[1] = str(env / "run/missing.pth")
    _fails(capsys, argv, "Weights file not found")
    (tmp_path / "empty").mkdir()
    _fails(capsys, _argv(env, tmp_path / "empty", out), "holds no images")
    _fails(capsys, _argv(env, env / "no_dic", out), "'dic'")
    _fails(capsys, _argv(env, "no_such_dataset_x", out), "not a file, folder")
    _fails(capsys, _argv(env, env / "movies", out, "--tile", "32", "--overlap", "32"), "--overlap")
    _fails(capsys, _argv(env, env / "movies", out, "MODEL.NO_SUCH_KEY", "1"), "MODEL.NO_SUCH_KEY")
    assert not out.exists()


@pytest.mark.slow
def test_grey_images_with_a_grey_recipe(tmp_path: Path, capsys) -> None:
    from pcna_seg.config.config import load_config
    from pcna_seg.data.image_io import write_image
    from pcna_seg.modeling import build_model

    cfg = load_config(ROOT / "configs/quick_schedules/quick_stage1_kaggle.yaml", ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    weights = tmp_path / "stage1.pth"  # no config.yaml beside it: --config-file names it
    torch.save({"model": build_model(cfg).state_dict(), "class_names": ["nucleus"]}, weights)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        write_image(tmp_path / "imgs" / name, rng.integers(0, 255, (40, 56)).astype(np.uint8))
    out = tmp_path / "pred"
    argv = [
        "--weights",
        str(weights),
        "--config-file",
        str(ROOT / "configs/quick_schedules/quick_stage1_kaggle.yaml"),
    ]
    _tool().main(
        [*argv, "--input", str(tmp_path / "imgs/*.png"), "--output", str(out), "--score-thresh", "0"]
    )
    assert "nucleus" in capsys.readouterr().out
    assert tifffile.imread(out / "b_labels.tif").shape == (40, 56)
    with open(out / "objects.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header[4] == "prob_nucleus"


@pytest.mark.slow
def test_earlier_prediction_refused_and_replaced_whole_with_overwrite(
    env: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "pred"
    out.mkdir()
    stale = out / "old_movie_0000_labels.tif"
    tifffile.imwrite(stale, np.ones((8, 8), np.uint16))
    line = _fails(capsys, _argv(env, env / "movies", out, "--score-thresh", "0"), str(out))
    assert "--overwrite" in line and stale.exists()
    _tool().main(_argv(env, env / "movies", out, "--score-thresh", "0", "--overwrite"))
    capsys.readouterr()
    assert not stale.exists()
    with open(out / "objects.csv", newline="") as fh:
        frames = {r["frame"] for r in csv.DictReader(fh)}
    labels = {p.name[: -len("_labels.tif")] for p in out.glob("*_labels.tif")}
    assert frames <= labels == {"mcf10a_s01_0000", "mcf10a_s01_0001"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_bad_values_and_output_paths_exit_1(env: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pred"
    _fails(
        capsys, _argv(env, env / "movies", out, "--score-thresh", "1.5"), "--score-thresh must be in [0, 1]"
    )
    afile = tmp_path / "a_file"
    afile.write_text("x")
    for flags in ([], ["--overwrite"]):
        _fails(
            capsys, _argv(env, env / "movies", afile, *flags), f"Output {afile} exists and is not a folder"
        )
    _fails(capsys, _argv(env, env / "movies", afile / "pred"), str(afile))
    _fails(capsys, _argv(env, env / "movies", env / "movies", "--overwrite"), "holds the input")
    _fails(capsys, _argv(env, env / "prepared/val.json", env / "prepared", "--overwrite"), "holds the input")
    four_d = tmp_path / "stack4d.tif"
    tifffile.imwrite(four_d, np.zeros((2, 3, 16, 16), np.uint16))
    _fails(capsys, _argv(env, four_d, out), str(four_d))
    assert not out.exists() and (env / "movies").is_dir() and (env / "prepared/val.json").is_file()
