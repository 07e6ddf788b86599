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
