"""Exact resume: a run stopped and resumed equals the uninterrupted run bit for bit, in the
weights and in metrics.json (wall-time keys aside), for 1 process and for 2 gloo processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _toy import Stop, StopAt, ToyDetector, ddp_exact_main, register_toy, toy_cfg, toy_mapper

from pcna_seg.engine.launch import launch
from pcna_seg.engine.trainer import Trainer

WALL_TIME_KEYS = {"time", "data_time", "eta"}


def _metrics(folder: Path) -> list[dict]:
    lines = (folder / "metrics.json").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k not in WALL_TIME_KEYS} for ln in lines]


def _run(out: Path, resume: bool = False, stop: int | None = None, workers: int = 0) -> Trainer:
    torch.manual_seed(0)
    cfg = toy_cfg(out, MAX_ITER=6)
    cfg.DATALOADER.NUM_WORKERS = workers
    trainer = Trainer(
        cfg,
        model=ToyDetector(dropout=0.5),
        train_mapper=toy_mapper,
        resume=resume,
        extra_hooks=[StopAt(stop)] if stop is not None else [],
    )
    try:
        trainer.train()
    except Stop:
        pass
    return trainer


@pytest.mark.parametrize("resume_workers", [0, 2])
def test_stopped_and_resumed_run_is_bit_identical(tmp_path: Path, resume_workers: int) -> None:
    """Stopped before iteration 4 (its metrics line for iteration 3 already written, last
    checkpoint after iteration 2), resumed (with another worker count): every parameter
    torch.equal, metrics.json identical line for line."""
    register_toy()
    full = _run(tmp_path / "full")
    _run(tmp_path / "split", stop=4)
    assert (tmp_path / "split/last_checkpoint").read_text() == "model_0000002.pth"
    assert _metrics(tmp_path / "split")[-1]["iteration"] == 3  # written after the checkpoint
    resumed = _run(tmp_path / "split", resume=True, workers=resume_workers)
    assert resumed.start_iter == 3
    done = resumed.model.state_dict()
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, done[name]), (name, (value.float() - done[name].float()).abs().max())
    assert _metrics(tmp_path / "split") == _metrics(tmp_path / "full")


@pytest.mark.slow
def test_two_process_resume_is_bit_identical(tmp_path: Path) -> None:
    """2 gloo processes, each with its own RNG stream (dropout differs per rank): resuming
    restores each rank's RNG state, so both ranks end equal to the uninterrupted run."""
    if torch.cuda.is_available():
        pytest.skip("launch picks NCCL when CUDA is present; this test covers the gloo CPU path")
    launch(ddp_exact_main, num_gpus_per_machine=2, args=(str(tmp_path), "first"))
    assert (tmp_path / "split/last_checkpoint").read_text() == "model_0000002.pth"
    launch(ddp_exact_main, num_gpus_per_machine=2, args=(str(tmp_path), "resume"))
    for rank in (0, 1):
        full = torch.load(tmp_path / f"full_rank{rank}.pt")
        split = torch.load(tmp_path / f"split_rank{rank}.pt")
        for name in full:
            assert torch.equal(full[name], split[name]), (rank, name)
    assert _metrics(tmp_path / "split") == _metrics(tmp_path / "full")
    ckpt = torch.load(tmp_path / "split/model_final.pth", weights_only=True)
    assert len(ckpt["rng_per_rank"]) == 2
    assert not torch.equal(ckpt["rng_per_rank"][0]["torch"], ckpt["rng_per_rank"][1]["torch"])
