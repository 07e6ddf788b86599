"""The U-Net on the shared engine with two CPU processes (gloo): it trains, resumes bit-exactly
and reaches the single-process validation PR-AUC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pcna_seg.config import load_config
from pcna_seg.engine.launch import launch
from pcna_seg.unet.train import train_unet


def _cfg(out: Path, epochs: int, tiles: dict):
    return load_config(opts=[
        *tiles["opts"], "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu", "SEED", "0",
        "UNET.DEPTH", "2", "UNET.BASE_WIDTH", "4", "UNET.SOLVER.OPTIMIZER", "adam",
        "UNET.SOLVER.BASE_LR", "0.01", "UNET.SOLVER.SCHEDULER", "none", "UNET.SOLVER.EPOCHS", str(epochs),
        "UNET.DATA.TRAIN_H5", str(tiles["train"]), "UNET.DATA.VAL_H5", str(tiles["val"]),
        "UNET.DATA.BATCH_SIZE", "8", "UNET.DATA.NUM_WORKERS", "0", "UNET.DATA.AUGMENT", "False",
        "UNET.EVAL.PR_THRESHOLDS", "51", "UNET.EVAL.OVERLAY_TILES", "2", "UNET.LOSS.CLASS_WEIGHTS", "[]",
    ])  # fmt: skip


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]


@pytest.mark.slow
def test_two_process_unet_trains_resumes_exactly_and_matches_one_process(tmp_path: Path, h5_tiles) -> None:
    if torch.cuda.is_available():
        pytest.skip("launch picks NCCL when CUDA is present; this test covers the gloo CPU path")
    epochs = 10
    one = train_unet(_cfg(tmp_path / "one", epochs, h5_tiles))
    launch(train_unet, 2, args=(_cfg(tmp_path / "two", epochs, h5_tiles),))
    launch(train_unet, 2, args=(_cfg(tmp_path / "part", 4, h5_tiles),))  # killed after epoch 4 ...
    launch(train_unet, 2, args=(_cfg(tmp_path / "part", epochs, h5_tiles), True))  # ... and resumed
    full, part = _records(tmp_path / "two"), _records(tmp_path / "part")
    assert [r["epoch"] for r in part] == [r["epoch"] for r in full] == list(range(1, epochs + 1))
    a = torch.load(tmp_path / "two" / "model_final.pth", weights_only=True)
    b = torch.load(tmp_path / "part" / "model_final.pth", weights_only=True)
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    assert len(a["rng_per_rank"]) == 2  # both processes' random states travel in the checkpoint
    single, double = one["final"]["pr_auc_mean"], full[-1]["pr_auc_mean"]
    assert single > 0.5  # it does learn (chance is the foreground fraction, well below)
    assert abs(double - single) <= 0.01, (single, double)
    assert "world size 2" in (tmp_path / "two" / "log.txt").read_text()
