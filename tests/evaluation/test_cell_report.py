"""tools/evaluate.py on label-image folders: numbers, report files, and one-line errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("evaluate_tool", ROOT / "tools/evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _labels(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((96, 96), dtype=np.uint16)
    for k in range(n):  # a grid of 12x12 squares, never touching
        y, x = 4 + 16 * (k // 5), 4 + 16 * (k % 5)
        img[y : y + 12, x : x + 12] = k + 1 + int(rng.integers(0, 3)) * 100
    return img


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    for i in range(3):
        g = _labels(10, i)
        tifffile.imwrite(gt / f"img{i}.tif", g)
        p = g.copy()
        if i == 2:
            p[p == p.max()] = 0  # one nucleus missed in image 2
        tifffile.imwrite(pred / f"img{i}_labels.tif", p)
    (pred / "img0_overlay.png").write_bytes(b"not a label image")  # ignored by the pairing
    return gt, pred


def _fails(capsys, argv: list[str], match: str) -> None:
    with pytest.raises(SystemExit) as info:
        _tool().main(argv)
    assert info.value.code == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err and match in lines[0], err


def test_report_numbers_and_files(folders, tmp_path, capsys):
    gt, pred = folders
    out = tmp_path / "eval"
    _tool().main(["--gt", str(gt), "--pred", str(pred), "--output", str(out)])
    m = json.loads((out / "metrics.json").read_text())["cells"]
    assert m["n_gt"] == 30 and m["n_pred"] == 29
    assert m["tp"][0] == 29 and m["fn"][0] == 1 and m["fp"][0] == 0
    assert m["f1@0.5"] == pytest.approx(58 / 59)
    assert m["count_mae"] == pytest.approx(1 / 3)
    assert [f["name"] for f in m["per_frame"]] == ["img0", "img1", "img2"]
    for name in ("report.md", "f1_vs_iou.png", "count_errors.png", "worst_images.png"):
        assert (out / name).stat().st_size > 0
    assert "F1@0.5 0.983" in capsys.readouterr().out
    # a second run refuses to mix into the report, --overwrite replaces it
    _fails(capsys, ["--gt", str(gt), "--pred", str(pred), "--output", str(out)], "--overwrite")
    _tool().main(["--gt", str(gt), "--pred", str(pred), "--output", str(out), "--overwrite"])


def test_bad_inputs_are_one_line(folders, tmp_path, capsys):
    gt, pred = folders
    out = str(tmp_path / "eval")
    (pred / "img2_labels.tif").unlink()
    _fails(capsys, ["--gt", str(gt), "--pred", str(pred), "--output", out], "no prediction partner")
    tifffile.imwrite(pred / "img2_labels.tif", np.zeros((10, 10), np.uint16))
    _fails(capsys, ["--gt", str(gt), "--pred", str(pred), "--output", out], "img2_labels.tif is (10, 10)")
    _fails(capsys, ["--gt", str(tmp_path / "nope"), "--pred", str(pred), "--output", out], "not found")
    assert not Path(out).exists()  # nothing written for bad input
