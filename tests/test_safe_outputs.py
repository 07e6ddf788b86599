"""The shared output rules: refuse non-empty folders, replace atomically, clean leftovers."""

from __future__ import annotations

import argparse
import os

import pytest

from pcna_seg.cli_utils import tool_parser, user_errors_exit
from pcna_seg.errors import ConfigError, OutputExistsError
from pcna_seg.utils_io import (
    check_output_folder,
    file_digest,
    file_stats,
    fingerprint,
    output_folder,
    remove_leftovers,
    write_text_atomic,
)


def _old_result(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model_final.pth").write_text("old")
    (out / "stale.tif").write_text("old")
    return out


def test_missing_or_empty_folder_is_used_in_place(tmp_path):
    for out in (tmp_path / "a", tmp_path / "b"):
        if out.name == "b":
            out.mkdir()
        with output_folder(out) as d:
            assert d == out
            (d / "x.txt").write_text("1")
        assert (out / "x.txt").read_text() == "1"


def test_non_empty_folder_is_refused_with_both_ways_out(tmp_path):
    out = _old_result(tmp_path)
    with pytest.raises(OutputExistsError, match=r"run is not empty .*--resume.*--overwrite"):
        with output_folder(out, can_resume=True):
            pass
    with pytest.raises(OutputExistsError, match="--overwrite to replace it or choose another folder"):
        check_output_folder(out)
    assert (out / "model_final.pth").read_text() == "old"


def test_file_in_place_of_folder_and_both_flags_are_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputExistsError, match="is not a folder"):
        check_output_folder(f)
    with pytest.raises(ConfigError, match="exclude each other"):
        check_output_folder(tmp_path, overwrite=True, resume=True)


def test_overwrite_replaces_whole_folder_never_mixes(tmp_path):
    out = _old_result(tmp_path)
    with output_folder(out, overwrite=True) as d:
        assert d != out and d.parent == out.parent and d.name.startswith(".")
        assert (out / "model_final.pth").read_text() == "old"  # old intact while building
        (d / "model_final.pth").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["model_final.pth"]  # stale.tif is gone
    assert (out / "model_final.pth").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_overwrite_keeps_old_output_when_new_job_fails(tmp_path):
    out = _old_result(tmp_path)
    with pytest.raises(RuntimeError):
        with output_folder(out, overwrite=True) as d:
            (d / "half.tif").write_text("half")
            raise RuntimeError("job failed")
    assert sorted(p.name for p in out.iterdir()) == ["model_final.pth", "stale.tif"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_resume_writes_in_place(tmp_path):
    out = _old_result(tmp_path)
    with output_folder(out, resume=True, can_resume=True) as d:
        assert d == out


def test_interrupted_swap_is_recovered(tmp_path):
    out = _old_result(tmp_path)
    os.rename(out, tmp_path / ".run.replaced")  # killed between the two renames
    assert check_output_folder(out, overwrite=True) == "replace"  # the old result is there again
    assert (out / "model_final.pth").read_text() == "old"  # the old result was put back


def test_leftovers_are_removed_and_logged(tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".model_0000019.abc123.tmp.pth").write_bytes(b"x" * 100)
    (out / ".tiles_train.x1.tmp.h5").write_bytes(b"x")
    (out / "tiles.partial.h5").write_bytes(b"x")  # resumable state, not a leftover
    (tmp_path / ".run.staging").mkdir()
    with caplog.at_level("WARNING"):
        removed = remove_leftovers(out)
    assert sorted(p.name for p in removed) == [".model_0000019.abc123.tmp.pth", ".tiles_train.x1.tmp.h5"]
    assert "interrupted run" in caplog.text
    with output_folder(out, resume=True):
        pass
    assert not (tmp_path / ".run.staging").exists()
    assert (out / "tiles.partial.h5").exists()


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_fingerprints_change_with_inputs(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"abc")
    a = fingerprint({"cfg": "x", "files": file_stats([f]), "w": file_digest(f)})
    assert a == fingerprint({"w": file_digest(f), "files": file_stats([f]), "cfg": "x"})  # key order
    f.write_bytes(b"abd")
    assert fingerprint({"cfg": "x", "files": file_stats([f]), "w": file_digest(f)}) != a
    assert fingerprint({"cfg": "y"}) != fingerprint({"cfg": "x"})


def test_flags_are_accepted_after_the_overrides():
    p = tool_parser("doc")
    p.add_argument("--config-file")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(["--config-file", "c.yaml", "SOLVER.MAX_ITER", "-5", "--resume"])
    assert args.resume and args.opts == ["SOLVER.MAX_ITER", "-5"]


@pytest.mark.parametrize(
    "exc, expected",
    [
        (PermissionError(13, "Permission denied", "/ro/out"), "Permission denied: /ro/out"),
        (IsADirectoryError(21, "Is a directory", "/x/dir"), "Is a directory: /x/dir"),
        (ValueError("could not convert string to float: 'two'"), "could not convert string"),
        (ConfigError("Unknown config key X"), "Unknown config key X"),
    ],
)
def test_tool_boundary_turns_user_errors_into_one_line(exc, expected, capsys, monkeypatch):
    monkeypatch.delenv("PCNA_SEG_DEBUG", raising=False)

    @user_errors_exit
    def main():
        raise exc

    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0]


def test_usage_errors_exit_1_with_one_line(capsys):
    p = tool_parser("doc", overrides=None)
    p.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as info:
        p.parse_args(["--n", "two"])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid int value: 'two'" in err[0]
    assert isinstance(p, argparse.ArgumentParser)


def test_failed_job_leaves_no_half_made_new_output(tmp_path):
    out = tmp_path / "pred"
    with pytest.raises(RuntimeError):
        with output_folder(out) as d:
            (d / "frame0_labels.tif").write_text("half")
            raise RuntimeError("job failed")
    assert not out.exists()  # nothing that could pass for a result
    with pytest.raises(RuntimeError):
        with output_folder(out, keep_partial=True) as d:  # training: checkpoints are resumable
            (d / "model_0000099.pth").write_text("ckpt")
            raise RuntimeError("killed")
    assert (out / "model_0000099.pth").exists()


def test_two_runs_into_one_output_at_once_are_refused(tmp_path):
    out = tmp_path / "ds"
    with output_folder(out) as d:
        (d / "a.json").write_text("1")
        with pytest.raises(OutputExistsError, match="Another run is writing"):
            with output_folder(out, overwrite=True):
                pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no lock file left behind


def test_output_that_is_or_holds_an_input_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "img.tif").write_text("x")
    for out in (data, tmp_path):
        with pytest.raises(OutputExistsError, match="is or holds the input"):
            check_output_folder(out, overwrite=True, inputs=[data / "img.tif", None])
    check_output_folder(tmp_path / "elsewhere", inputs=[data])
