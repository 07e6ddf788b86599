"""Trainer end to end on in-memory synthetic tiles: outputs, exact resume, NaN error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pcna_seg.config import load_config
from pcna_seg.errors import ConfigError, PcnaSegError
from pcna_seg.unet.train import train_unet


def _tiles(n: int, size: int = 32, seed: int = 0) -> TensorDataset:
    """Live/dead-like tiles: channel 0 shows every blob, channel 1 only dead (class 2) blobs."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.05, 0.02, (n, 2, size, size)).astype(np.float32)
    targets = np.zeros((n, size, size), np.int64)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        for _ in range(3):
            cy, cx, r = rng.integers(5, size - 5), rng.integers(5, size - 5), rng.integers(3, 6)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            cls = 2 if rng.random() < 0.4 else 1
            targets[i][disk] = cls
    images[:, 0] += 0.8 * (targets > 0)
    images[:, 1] += 0.8 * (targets == 2)
    return TensorDataset(torch.from_numpy(images), torch.from_numpy(targets))


def _loaders():
    train = DataLoader(_tiles(48, seed=0), batch_size=8, shuffle=True)
    val = DataLoader(_tiles(16, seed=1), batch_size=16)
    return train, val


def _cfg(tmp_path, epochs: int, *extra: str):
    return load_config(opts=[
        "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu", "SEED", "3",
        "UNET.DEPTH", "2", "UNET.BASE_WIDTH", "4", "UNET.LOSS.CLASS_WEIGHTS", "[0.2, 1.0, 1.0]",
        "UNET.SOLVER.OPTIMIZER", "adam", "UNET.SOLVER.BASE_LR", "0.01", "UNET.SOLVER.EPOCHS", str(epochs),
        "UNET.SOLVER.SCHEDULER", "cosine_kicks", "UNET.SOLVER.T_0", "2", "UNET.SOLVER.PATIENCE", "0",
        "UNET.SOLVER.ETA_MIN", "0.001", "UNET.EVAL.PR_THRESHOLDS", "21", "UNET.EVAL.OVERLAY_TILES", "4",
        *extra,
    ])  # fmt: skip


@pytest.mark.slow
def test_train_outputs(tmp_path) -> None:
    extra = ("UNET.BASE_WIDTH", "8", "UNET.SOLVER.T_0", "10", "UNET.SOLVER.ETA_MIN", "0.005")
    summary = train_unet(_cfg(tmp_path, 3, *extra), loaders=_loaders())
    lines = (tmp_path / "metrics.json").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    for key in ("train_loss", "val_loss", "lr", "pr_auc/DAPI", "pr_auc/Cy5", "iou/Cy5", "dice/DAPI"):
        assert np.isfinite(recs[-1][key])
    assert recs[-1]["pr_auc/DAPI"] > 0.8 and recs[-1]["pr_auc/Cy5"] > 0.6  # chance: ~0.1 / ~0.05
    for name in ("loss.png", "lr.png", "pr_auc.png", "pr_curves.png", "config.yaml", "summary.json",
                 "last_checkpoint", "model_best.pth", "model_final.pth"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0, name
    assert len(list((tmp_path / "overlays").glob("epoch_*.png"))) == 3
    assert summary["video"] and (tmp_path / summary["video"].split("/")[-1]).stat().st_size > 0
    assert summary["epochs"] == 3
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    # periodic checkpoints are pruned: the newest while training, all once model_final.pth exists
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_best.pth", "model_final.pth"]
    best = torch.load(tmp_path / "model_best.pth", weights_only=True)
    assert best["epoch"] == 3 and best["hooks"]["EpochHook"]["best"] == pytest.approx(recs[-1]["val_loss"])


@pytest.mark.slow
def test_resume_matches_uninterrupted(tmp_path) -> None:
    full = train_unet(_cfg(tmp_path / "full", 5), loaders=_loaders())
    train_unet(_cfg(tmp_path / "part", 2), loaders=_loaders())
    resumed = train_unet(_cfg(tmp_path / "part", 5), resume=True, loaders=_loaders())
    a = [json.loads(x) for x in (tmp_path / "full" / "metrics.json").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "part" / "metrics.json").read_text().splitlines()]
    assert [r["epoch"] for r in b] == [1, 2, 3, 4, 5]
    assert [r["lr"] for r in a] == pytest.approx([r["lr"] for r in b], rel=1e-9)
    assert [r["train_loss"] for r in a] == pytest.approx([r["train_loss"] for r in b], rel=1e-6, abs=1e-9)
    assert [r["val_loss"] for r in a] == pytest.approx([r["val_loss"] for r in b], rel=1e-6, abs=1e-9)
    assert resumed["epochs"] == full["epochs"] == 5
    ck_a = torch.load(tmp_path / "full" / "model_final.pth", weights_only=True)
    ck_b = torch.load(tmp_path / "part" / "model_final.pth", weights_only=True)
    assert ck_a["scheduler"]["kick_epochs"] == ck_b["scheduler"]["kick_epochs"]
    assert ck_a["epoch"] == ck_b["epoch"] == 5
    for name, value in ck_a["model"].items():  # bit-exact: the same parameters to the last bit
        assert torch.equal(value, ck_b["model"][name]), name


@pytest.mark.slow
# 0 workers only: that batches do not depend on the worker count is tested in test_dataset.py
# (0 vs 2 workers), and a worker-backed run here costs ~25 s of process start-up.
@pytest.mark.parametrize("workers", [0])
def test_resume_with_augmented_h5_tiles_is_exact(tmp_path, h5_tiles, workers) -> None:
    """Augmentation is a function of (seed, epoch, tile), so a resumed run trains on exactly the
    same batches as an uninterrupted one: per-epoch train losses agree to float precision."""
    data = [*h5_tiles["opts"], "UNET.DATA.TRAIN_H5", str(h5_tiles["train"]),
            "UNET.DATA.VAL_H5", str(h5_tiles["val"]),
            "UNET.DATA.BATCH_SIZE", "8", "UNET.DATA.NUM_WORKERS", str(workers),
            "UNET.EVAL.OVERLAY_TILES", "0", "UNET.LOSS.CLASS_WEIGHTS", "[]"]  # fmt: skip
    train_unet(_cfg(tmp_path / "full", 3, *data))
    train_unet(_cfg(tmp_path / "part", 1, *data))
    train_unet(_cfg(tmp_path / "part", 3, *data), resume=True)
    a = [json.loads(x) for x in (tmp_path / "full" / "metrics.json").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "part" / "metrics.json").read_text().splitlines()]
    assert [r["epoch"] for r in b] == [1, 2, 3]
    assert [r["train_loss"] for r in a] == pytest.approx([r["train_loss"] for r in b], rel=1e-6, abs=1e-9)
    assert [r["val_loss"] for r in a] == pytest.approx([r["val_loss"] for r in b], rel=1e-6, abs=1e-9)
    assert len({round(r["train_loss"], 6) for r in a}) == 3  # the model does train


def test_nan_loss_is_a_clear_error(tmp_path) -> None:
    ds = _tiles(8)
    ds.tensors[0][0, 0, 0, 0] = float("nan")
    loaders = (DataLoader(ds, batch_size=8), DataLoader(_tiles(4), batch_size=4))
    with pytest.raises(
        PcnaSegError, match=r"diverged at iteration 0: loss is not finite.*UNET.SOLVER.BASE_LR"
    ):
        train_unet(_cfg(tmp_path, 1), loaders=loaders)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing half-written


def test_bad_monitor_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match="MONITOR"):
        train_unet(_cfg(tmp_path, 1, "UNET.SOLVER.MONITOR", "val_accuracy"), loaders=_loaders())


@pytest.mark.slow
def test_train_from_tiled_h5_and_tool(tmp_path, capsys) -> None:
    """The real path: synthetic frames → HDF5 tiles → build_unet_loaders → trainer → predict tool."""
    import subprocess
    import sys
    from pathlib import Path

    from pcna_seg.data.synthetic.write_livedead import write as write_livedead
    from pcna_seg.unet.tiling import run_tiling

    write_livedead(tmp_path / "frames", wells=("A1", "A2", "B1"), timepoints=1, height=96, width=96, seed=0)
    tiling = ["UNET.TILING.TILE", "32", "UNET.TILING.STRIDE", "32", "UNET.TILING.WORKERS", "0",
              "UNET.TILING.VAL_FRACTION", "0.34"]  # fmt: skip
    paths = run_tiling(load_config(opts=tiling), tmp_path / "frames", tmp_path / "t.h5", progress=False)
    cfg = load_config(opts=[
        *tiling, "OUTPUT_DIR", str(tmp_path / "run"), "MODEL.DEVICE", "cpu", "SEED", "0",
        "UNET.DEPTH", "2", "UNET.BASE_WIDTH", "4", "UNET.SOLVER.EPOCHS", "1", "UNET.DATA.NUM_WORKERS", "0",
        "UNET.DATA.BATCH_SIZE", "8", "UNET.DATA.TRAIN_H5", str(paths["train"]),
        "UNET.DATA.VAL_H5", str(paths["val"]), "UNET.EVAL.PR_THRESHOLDS", "21",
    ])  # fmt: skip
    summary = train_unet(cfg)  # CLASS_WEIGHTS [] -> weights from the file's class_counts
    assert summary["epochs"] == 1 and np.isfinite(summary["final"]["pr_auc/Cy5"])
    root = Path(__file__).resolve().parents[2]
    run_dir = tmp_path / "run"
    tool = str(root / "tools" / "predict_unet.py")
    cmd = [sys.executable, tool, "--config-file", str(run_dir / "config.yaml"),
           "--weights", str(run_dir / "model_final.pth"), "--input", str(tmp_path / "frames"),
           "--output", str(tmp_path / "pred"), "UNET.INFER.TILE", "64",
           "UNET.INFER.OVERLAP", "16"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "pred" / "counts.csv").read_text().startswith("frame,n_nuclei,n_live,n_dead")
    sys.path.insert(0, str(root / "tools"))
    from train_unet import main as train_main

    with pytest.raises(SystemExit) as exc:
        train_main(
            [
                "--config-file",
                str(run_dir / "config.yaml"),
                "UNET.DATA.TRAIN_H5",
                str(tmp_path / "no.h5"),
                "OUTPUT_DIR",
                str(tmp_path / "run2"),
            ]  # fmt: skip
        )
    assert exc.value.code == 1
    assert "no.h5" in capsys.readouterr().err
