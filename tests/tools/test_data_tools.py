"""The data tools as a user runs them: exit codes, one-line errors, files written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_info_and_version():
    res = run("-m", "pcna_seg", "info")
    assert res.returncode == 0, res.stderr
    assert "torchvision ops: ok" in res.stdout
    assert "detectron2 engine" in res.stdout
    ver = run("-m", "pcna_seg", "--version")
    assert ver.returncode == 0 and ver.stdout.startswith("pcna_seg ")


def test_make_prepare_list_show(tmp_path):
    raw, root = tmp_path / "raw", tmp_path / "datasets"
    res = run(
        "tools/make_synthetic.py", "pcna_masks", str(raw), "--option", "n_movies=3", "--option", "n_frames=2"
    )
    assert res.returncode == 0, res.stderr
    assert "pcna_masks: 6 images" in res.stdout
    res = run("tools/prepare_dataset.py", "pcna_masks", str(raw), str(root / "pcna_stage3"), "--quiet")
    assert res.returncode == 0, res.stderr
    card = json.loads((root / "pcna_stage3" / "dataset_card.json").read_text())
    assert card["images"] == 6 and card["classes"] == ["G1/G2", "S", "M"]
    res = run("-m", "pcna_seg", "datasets", "list", "--root", str(root))
    assert "pcna_stage3_train" in res.stdout and "pcna_stage3_val" in res.stdout
    sheet = tmp_path / "sheet.png"
    res = run(
        "-m", "pcna_seg", "datasets", "show", "pcna_stage3_train", "--root", str(root), "--sheet", str(sheet)
    )
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout[: res.stdout.rindex("}") + 1])
    assert shown["channels"] == ["dic", "pcna"] and shown["images"] + card["split"]["val"] == 6
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["tools/prepare_dataset.py", "dsb2018", "/nonexistent/x", "OUT"], "/nonexistent/x"),
        (["tools/prepare_dataset.py", "pcna_via", ".", "OUT", "--option", "bogus=1"], "valid options"),
        (
            ["-m", "pcna_seg", "datasets", "show", "nope", "--root", "/nonexistent"],
            "'nope' is not registered",
        ),
    ],
)
def test_bad_input_is_one_line_exit_1(tmp_path, args, message):
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    res = run(*args)
    assert res.returncode == 1
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out" / "annotations.json").exists()
