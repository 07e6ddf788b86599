"""tools/train_net.py: bad input ends with exit code 1 and one 'error:' line, no traceback."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CFG = str(ROOT / "configs/quick_schedules/quick_stage3_pcna.yaml")


def _tool():
    spec = importlib.util.spec_from_file_location("train_net_tool", ROOT / "tools/train_net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
    with pytest.raises(SystemExit) as info:
        _tool().main(argv)
    assert info.value.code == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match in lines[0], lines[0]
    return lines[0]


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
        "INPUT.MIN_SIZE_TRAIN",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
        "INPUT.CROP.SIZE",
    ):
        assert key in line


def test_bad_override_key(capsys, data_root: Path, tmp_path: Path) -> None:
    _fails(capsys, _argv(data_root, tmp_path, "SOLVER.BASE_RL", "0.1"), "SOLVER.BASE_LR")


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
