"""The data tools as a user runs them: exit codes, one-line errors, files written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import expect_error, load_tool

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


def _tool(name: str):
    return load_tool(name)


def _fails(capsys, tool: str, argv: list[str], match: str) -> str:
    return expect_error(capsys, tool, argv, match)


@pytest.fixture()
def raw(tmp_path: Path) -> Path:
    _tool("make_synthetic").main(
        [
            "dsb2018",
            str(tmp_path / "raw"),
            *[f"--option={o}" for o in ("n_images=3", "height=48", "width=48")],
        ]
    )
    return tmp_path / "raw"


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_refuses_non_empty_output_and_overwrite_replaces_it(tmp_path, raw, capsys) -> None:
    out = tmp_path / "ds"
    (out / "images").mkdir(parents=True)
    (out / "images" / "stale.png").write_bytes(b"old dataset")
    line = _fails(capsys, "prepare_dataset", ["dsb2018", str(raw), str(out), "--quiet"], str(out))
    assert "--overwrite" in line and (out / "images" / "stale.png").exists()
    _tool("prepare_dataset").main(["dsb2018", str(raw), str(out), "--quiet", "--overwrite"])
    assert not (out / "images" / "stale.png").exists() and len(list((out / "images").iterdir())) == 3
    before = _tree(out)
    bad = sorted(raw.glob("stage1_train/*/images/*.png"))[0]
    bad.write_bytes(b"\x89PNG corrupt")
    _fails(capsys, "prepare_dataset", ["dsb2018", str(raw), str(out), "--quiet", "--overwrite"], bad.name)
    assert _tree(out) == before  # the failed job left the old dataset intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--val-fraction", "1.5"], "--val-fraction must be in [0, 1), got 1.5"),
        (["--option", "workers=two"], "--option workers expects an integer, got 'two'"),
        (["--option", "seed=1"], "set by --seed"),
    ],
)
def test_prepare_bad_values_before_any_work(tmp_path, raw, capsys, extra, match) -> None:
    _fails(capsys, "prepare_dataset", ["dsb2018", str(raw), str(tmp_path / "out"), *extra], match)
    assert not (tmp_path / "out").exists()


def test_prepare_output_paths(tmp_path, raw, capsys) -> None:
    afile = tmp_path / "a_file"
    afile.write_text("x")
    for flags in ([], ["--overwrite"]):
        line = _fails(capsys, "prepare_dataset", ["dsb2018", str(raw), str(afile), *flags], str(afile))
        assert "not a folder" in line
    _fails(capsys, "prepare_dataset", ["dsb2018", str(raw), str(raw)], "is the source folder")
    _fails(capsys, "prepare_dataset", ["dsb2018", str(raw), str(raw / "out")], "lies inside the source")
    _fails(capsys, "prepare_dataset", ["dsb2018", str(raw), str(afile / "out")], str(afile))


def test_make_synthetic_refuses_non_empty_output(tmp_path, raw, capsys) -> None:
    before = _tree(raw)
    _fails(capsys, "make_synthetic", ["dsb2018", str(raw), "--seed", "5"], "--overwrite")
    assert _tree(raw) == before
    _fails(capsys, "make_synthetic", ["dsb2018", str(tmp_path / "x"), "--option", "n_images=two"], "'two'")
    (raw / "stale.txt").write_text("old")
    _tool("make_synthetic").main(["dsb2018", str(raw), "--overwrite", "--option", "n_images=2"])
    assert not (raw / "stale.txt").exists() and len(list(raw.glob("stage1_train/*"))) == 2


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_prepare_into_read_only_folder_is_one_line(tmp_path, raw, capsys) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _fails(capsys, "prepare_dataset", ["dsb2018", str(raw), str(locked / "ds"), "--quiet"], str(locked))
    finally:
        locked.chmod(0o700)
