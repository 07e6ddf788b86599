"""DDP with two CPU processes (gloo): identical parameters on both ranks, files from rank 0 only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _toy import ddp_main

from pcna_seg.engine.launch import launch


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path: Path) -> None:
    out = tmp_path / "run"
    if torch.cuda.is_available():
        pytest.skip("launch picks NCCL when CUDA is present; this test covers the gloo CPU path")
    launch(ddp_main, num_gpus_per_machine=2, args=(str(out), 3))
    p0 = torch.load(tmp_path / "params_rank0.pt")
    p1 = torch.load(tmp_path / "params_rank1.pt")
    assert p0.keys() == p1.keys() and p0
    for name in p0:
        assert torch.equal(p0[name], p1[name]), name
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("events"))
    assert written == [
        "config.yaml",
        "curves.png",
        "last_checkpoint",
        "metrics.json",
        "model_0000001.pth",
        "model_final.pth",
    ]
    assert len((out / "metrics.json").read_text().splitlines()) == 3  # one writer, not two


@pytest.mark.slow
def test_two_process_train_net_overwrite(tmp_path: Path) -> None:
    """run_train_net(..., overwrite=True) in 2 processes: rank 0 builds the run in the staging
    folder every rank agrees on and swaps it in; the old run's files are gone, none is mixed."""
    import yaml

    from pcna_seg.data.converters.pcna import convert_masks
    from pcna_seg.data.synthetic.write_pcna import write_masks
    from pcna_seg.engine.trainer import run_train_net

    if torch.cuda.is_available():
        pytest.skip("launch picks NCCL when CUDA is present; this test covers the gloo CPU path")
    root = tmp_path / "datasets"
    write_masks(root / "raw", seed=0, n_movies=2, n_frames=2, height=64, width=64, n_nuclei=4)
    convert_masks(root / "raw", root / "pcna_stage3", val_fraction=0.5, progress=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_0000099.pth").write_bytes(b"an older run")
    (out / "metrics.json").write_text('{"iteration": 99}\n')
    cfg = str(Path(__file__).resolve().parents[2] / "configs/quick_schedules/quick_stage3_pcna.yaml")
    opts = ["DATASETS.ROOT", str(root), "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "1", "SOLVER.STEPS", "()"]
    opts += ["SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", "()"]
    launch(run_train_net, num_gpus_per_machine=2, args=(cfg, opts, False, False, True))
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("events"))
    assert names == [
        "config.yaml",
        "curves.png",
        "last_checkpoint",
        "log.txt",
        "metrics.json",
        "model_final.pth",
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert yaml.safe_load((out / "config.yaml").read_text())["OUTPUT_DIR"] == str(out)
    assert [ln for ln in (out / "metrics.json").read_text().splitlines() if '"iteration": 0' in ln]
