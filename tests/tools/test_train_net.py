"""tools/train_net.py: bad input ends with exit code 1 and one 'error:' line, no traceback; the
output-folder rule (--resume / --overwrite); --eval-only refuses weights that do not fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _cli import expect_error, load_tool

ROOT = Path(__file__).resolve().parents[2]
CFG = str(ROOT / "configs/quick_schedules/quick_stage3_pcna.yaml")


def _tool():
    return load_tool("train_net")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pcna_seg.data.converters.pcna import convert_masks
    from pcna_seg.data.synthetic.write_pcna import write_masks

    root = tmp_path_factory.mktemp("datasets")
    write_masks(root / "raw", seed=0, n_movies=2, n_frames=2, height=64, width=64, n_nuclei=4)
    convert_masks(root / "raw", root / "pcna_stage3", val_fraction=0.5, progress=False)
    empty = json.loads((root / "pcna_stage3/train.json").read_text())
    empty["annotations"] = []
    (root / "blank").mkdir()
    for img in empty["images"]:  # keep paths valid from the new folder
        img["file_name"] = "../pcna_stage3/" + img["file_name"]
    (root / "blank/train.json").write_text(json.dumps(empty))
    return root


def _fails(capsys, argv: list[str], match: str) -> str:
    return expect_error(capsys, "train_net", argv, match)


def _argv(root: Path, tmp_path: Path, *opts: str) -> list[str]:
    base = [
        "DATASETS.ROOT",
        str(root),
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        "SOLVER.MAX_ITER",
        "1",
        "SOLVER.STEPS",
        "()",
        "DATALOADER.NUM_WORKERS",
        "0",
        "TEST.EVAL_PERIOD",
        "0",
    ]
    return ["--config-file", CFG, *base, *opts]


def test_missing_weights(capsys, data_root: Path, tmp_path: Path) -> None:
    _fails(capsys, _argv(data_root, tmp_path, "MODEL.WEIGHTS", str(tmp_path / "nope.pth")), "nope.pth")


def test_corrupt_weights(capsys, data_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage")
    _fails(capsys, _argv(data_root, tmp_path, "MODEL.WEIGHTS", str(bad)), "bad.pth")
    assert not list((tmp_path / "out").glob("*.pth"))


def test_unregistered_dataset_lists_known(capsys, data_root: Path, tmp_path: Path) -> None:
    line = _fails(capsys, _argv(data_root, tmp_path, "DATASETS.TRAIN", "('nope_train',)"), "'nope_train'")
    assert "registered:" in line
    assert not (tmp_path / "out").exists()  # nothing written for a run that cannot start


def test_channel_not_in_records(capsys, data_root: Path, tmp_path: Path) -> None:
    line = _fails(capsys, _argv(data_root, tmp_path, "INPUT.CHANNELS", "['pcna','gfp','otsu_mask']"), "'gfp'")
    assert "dic" in line and "pcna" in line


def test_zero_annotation_dataset(capsys, data_root: Path, tmp_path: Path) -> None:
    _fails(capsys, _argv(data_root, tmp_path, "DATASETS.TRAIN", "('blank_train',)"), "no annotations")


def test_gpu_out_of_memory_suggests_keys(capsys, data_root: Path, tmp_path: Path, monkeypatch) -> None:
    from pcna_seg.engine import trainer

    def oom(self):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(trainer.Trainer, "train", oom)
    line = _fails(capsys, _argv(data_root, tmp_path), "out of memory")
    for key in (
        "SOLVER.IMS_PER_BATCH",
        "INPUT.SCALE.FACTOR",
        "INPUT.MIN_SIZE_TRAIN",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
        "INPUT.CROP.SIZE",
    ):
        assert key in line


def test_bad_override_key(capsys, data_root: Path, tmp_path: Path) -> None:
    _fails(capsys, _argv(data_root, tmp_path, "SOLVER.BASE_RL", "0.1"), "SOLVER.BASE_LR")


def test_refused_before_anything_is_written(capsys, data_root: Path, tmp_path: Path) -> None:
    """OUTPUT_DIR a file or under a file, a value that can only be a mistake: one line, exit 1."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    _fails(capsys, _argv(data_root, tmp_path, "OUTPUT_DIR", str(afile)), str(afile))
    _fails(capsys, _argv(data_root, tmp_path, "OUTPUT_DIR", str(afile / "sub")), str(afile))
    _fails(capsys, _argv(data_root, tmp_path, "SOLVER.MAX_ITER", "-5"), "SOLVER.MAX_ITER must be in [1, inf)")
    assert not (tmp_path / "out").exists() and afile.read_text() == "not a folder"


def _listing(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


@pytest.mark.slow
def test_output_folder_rule(capsys, caplog, data_root: Path, tmp_path: Path, monkeypatch) -> None:
    """Non-empty OUTPUT_DIR: refused without a flag (nothing touched); --overwrite builds the
    new run aside (a failing one leaves the old run intact, a finished one replaces it whole
    and its config names the final folder); --resume continues and removes a killed run's
    hidden leftovers with a log line."""
    import yaml

    from pcna_seg.engine import trainer

    out = tmp_path / "out"
    argv = _argv(data_root, tmp_path, "DATASETS.TEST", "()")  # no evaluation: faster, same rule
    _tool().main(argv)
    old = _listing(out)
    line = _fails(capsys, argv, "--overwrite")
    assert str(out) in line and "--resume" in line and _listing(out) == old

    real_train = trainer.Trainer.train

    def failing(self):
        raise trainer.PcnaSegError("boom")

    monkeypatch.setattr(trainer.Trainer, "train", failing)
    _fails(capsys, [*argv, "--overwrite"], "boom")
    assert _listing(out) == old and not list(tmp_path.glob(".out.*"))  # old run intact, no staging left
    monkeypatch.setattr(trainer.Trainer, "train", real_train)

    (out / "model_0000099.pth").write_bytes(b"stale")
    _tool().main([*argv, "--overwrite", "SOLVER.MAX_ITER", "2"])
    assert not (out / "model_0000099.pth").exists() and not list(tmp_path.glob(".out.*"))
    assert yaml.safe_load((out / "config.yaml").read_text())["OUTPUT_DIR"] == str(out)
    stored = yaml.safe_load(torch.load(out / "model_final.pth", weights_only=True)["config"])
    assert stored["OUTPUT_DIR"] == str(out)
    assert [json.loads(ln)["iteration"] for ln in (out / "metrics.json").read_text().splitlines()] == [0, 1]

    leftover = out / ".model_0000002.k3x9.tmp.pth"  # what a kill -9 during a save leaves
    leftover.write_bytes(b"half a checkpoint")
    with caplog.at_level("INFO"):
        _tool().main([*argv, "--resume", "SOLVER.MAX_ITER", "3"])
    assert not leftover.exists() and "left by an interrupted run" in caplog.text
    assert "Resumed from" in caplog.text
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 2


def test_eval_only_strict_weights_and_eval_folder_rule(capsys, data_root: Path, tmp_path: Path) -> None:
    """--eval-only refuses a checkpoint of another class count (names parameter and shapes);
    an existing eval/<dataset>/ needs --overwrite and is then replaced as a whole."""
    from pcna_seg.config import load_config
    from pcna_seg.modeling import build_model

    def weights(num_classes: int) -> Path:
        cfg = load_config(CFG, ["MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes), "MODEL.DEVICE", "cpu"])
        torch.manual_seed(0)
        path = tmp_path / f"model_{num_classes}cls.pth"
        torch.save({"model": build_model(cfg).state_dict(), "iteration": 0}, path)
        return path

    argv = ["--eval-only", *_argv(data_root, tmp_path)]
    line = _fails(capsys, [*argv, "MODEL.WEIGHTS", str(weights(1))], "roi_heads.box_predictor.cls_score")
    assert "[2, " in line and "[4, " in line and "model_1cls.pth" in line  # both shapes (K+1 rows)
    assert not (tmp_path / "out").exists()
    good = [*argv, "MODEL.WEIGHTS", str(weights(3))]
    _tool().main(good)
    ev = tmp_path / "out/eval/pcna_stage3_val"
    assert {"results.json", "config.yaml"} <= {p.name for p in ev.iterdir()}
    assert not (tmp_path / "out/config.yaml").exists()  # eval-only never rewrites a run's config
    (ev / "note.txt").write_text("from an older evaluation")
    line = _fails(capsys, good, "--overwrite")
    assert str(ev) in line and (ev / "note.txt").exists()
    _tool().main([*good, "--overwrite"])
    assert not (ev / "note.txt").exists() and (ev / "results.json").is_file()


@pytest.mark.slow
def test_subprocess_exit_code_and_train_eval(data_root: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "tools/train_net.py"),
        *_argv(data_root, tmp_path, "DATASETS.TRAIN", "('x_train',)"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    # a real (2-iteration) training run, then --eval-only on its final checkpoint
    argv = _argv(data_root, tmp_path, "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "1")
    _tool().main(argv)
    out = tmp_path / "out"
    assert (out / "model_final.pth").is_file() and (out / "eval/pcna_stage3_val/results.json").is_file()
    _tool().main(
        [
            "--eval-only",
            *argv,
            "MODEL.WEIGHTS",
            str(out / "model_final.pth"),
            "OUTPUT_DIR",
            str(tmp_path / "ev"),
        ]
    )
    res = json.loads((tmp_path / "ev/eval/pcna_stage3_val/results.json").read_text())
    assert {"bbox", "segm", "phase_confusion"} <= set(res)


def _relabelled(root: Path, name: str, names: list[str]) -> None:
    """A copy of pcna_stage3/train.json whose categories carry ``names`` (same ids)."""
    data = json.loads((root / "pcna_stage3/train.json").read_text())
    for cat, new in zip(sorted(data["categories"], key=lambda c: c["id"]), names):
        cat["name"] = new
    for img in data["images"]:
        img["file_name"] = "../pcna_stage3/" + img["file_name"]
        img["channels"] = {k: "../pcna_stage3/" + v for k, v in img.get("channels", {}).items()}
    (root / name).mkdir(exist_ok=True)
    (root / name / "train.json").write_text(json.dumps(data))


def test_checkpoint_carries_scale_and_classes_and_class_lists_must_agree(
    capsys, data_root: Path, tmp_path: Path
) -> None:
    _tool().main(_argv(data_root, tmp_path))
    ck = torch.load(tmp_path / "out/model_final.pth", weights_only=True)
    assert ck["class_names"] == ["G1/G2", "S", "M"]
    assert ck["scale"]["mode"] == "fixed" and ck["scale"]["factor"] == 1.0
    assert 5 < ck["scale"]["train_diameter"] < 40  # the synthetic nuclei's median diameter, native px
    _relabelled(data_root, "swapped", ["S", "G1/G2", "M"])
    _relabelled(data_root, "other", ["nucleus", "cell", "debris"])
    two = "('pcna_stage3_train', 'swapped_train')"  # ids would silently mix G1/G2 with S
    line = _fails(capsys, _argv(data_root, tmp_path / "b", "DATASETS.TRAIN", two), "same classes")
    assert "swapped_train" in line and not (tmp_path / "b/out").exists()
    weights = str(tmp_path / "out/model_final.pth")
    _fails(
        capsys,
        _argv(data_root, tmp_path / "c", "DATASETS.TEST", "('other_train',)", "MODEL.WEIGHTS", weights)
        + ["--eval-only"],
        "were trained on classes",
    )
    # a test set with the same classes in another order is evaluated by name
    _tool().main(
        _argv(data_root, tmp_path / "d", "DATASETS.TEST", "('swapped_train',)", "MODEL.WEIGHTS", weights)
        + ["--eval-only"]
    )
    assert (tmp_path / "d/out/eval/swapped_train/results.json").is_file()


def test_a_failed_start_leaves_nothing_and_bad_process_counts(
    capsys, data_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _fails(capsys, _argv(data_root, tmp_path, "INPUT.CHANNELS", "['pcna','gfp','otsu_mask']"), "'gfp'")
    _fails(capsys, _argv(data_root, tmp_path, "INPUT.SCALE.FACTOR", "0.01"), "INPUT.SCALE.MIN_OBJECT_PX")
    assert not out.exists()  # no config.yaml / log.txt to make the corrected rerun refused
    _tool().main(_argv(data_root, tmp_path))  # the corrected run needs no --overwrite
    assert (out / "model_final.pth").is_file()
    for flags in (["--num-gpus", "0"], ["--num-gpus", "-1"], ["--num-machines", "2", "--machine-rank", "5"]):
        _fails(
            capsys,
            [*_argv(data_root, tmp_path / "g"), *flags],
            flags[0] if flags[0] != "--num-machines" else "--machine-rank",
        )
