"""A sweep through dask-jobqueue's PBSCluster end to end, with stand-in ``qsub``/``qdel`` on PATH
that run each job script on this machine: the generated job script starts a dask worker that
connects to the sweep's scheduler and runs the trials."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from pcna_seg.campaign import sweep

ROOT = Path(__file__).resolve().parents[2]

QSUB = """#!/bin/bash
# stand-in for PBS qsub: keep a copy of the job script, run it in the background, print a job id
script=$(mktemp {jobs}/job.XXXXXX)
cp "${{@: -1}}" "$script"
nohup bash "$script" > "$script.log" 2>&1 &
echo "$!.stand-in"
"""
QDEL = """#!/bin/bash
for id in "$@"; do pid="${id%%.*}"; pkill -P "$pid" 2>/dev/null; kill "$pid" 2>/dev/null; done; exit 0
"""


@pytest.mark.slow
def test_sweep_on_a_pbs_cluster_with_stand_in_qsub(tmp_path: Path, monkeypatch) -> None:
    from test_sweep_run import TINY, _rows

    from pcna_seg.config import load_config
    from pcna_seg.data.synthetic.write_livedead import write as write_livedead
    from pcna_seg.unet.tiling import run_tiling

    write_livedead(
        tmp_path / "frames", wells=("A1", "A2", "B1"), timepoints=1, height=64, width=64, density=2e-3
    )
    opts = [
        "UNET.TILING.TILE",
        "32",
        "UNET.TILING.STRIDE",
        "32",
        "UNET.TILING.WORKERS",
        "0",
        "UNET.TILING.VAL_FRACTION",
        "0.34",
    ]
    tiles = run_tiling(load_config(opts=opts), tmp_path / "frames", tmp_path / "t.h5", progress=False)
    bin_dir, jobs = tmp_path / "bin", tmp_path / "jobs"
    bin_dir.mkdir()
    jobs.mkdir()
    (bin_dir / "qsub").write_text(QSUB.format(jobs=jobs))
    (bin_dir / "qdel").write_text(QDEL)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    data = {
        "name": "pbs",
        "trainer": "unet",
        "base": str(ROOT / "configs/unet/livedead_quick.yaml"),
        "opts": {**TINY, "UNET.DATA.TRAIN_H5": str(tiles["train"]), "UNET.DATA.VAL_H5": str(tiles["val"])},
        "output_dir": str(tmp_path / "sweep"),
        "metric": "val_loss",
        "mode": "min",
        "grid": {"UNET.SOLVER.OPTIMIZER": ["sgd", "adam"]},
        "resources": {"cpus": 1, "gpus": 0},
        "executor": {
            "kind": "dask",
            "cluster": {"kind": "pbs", "queue": "q", "walltime": "00:10:00", "jobs": 2},
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    summary = sweep.run_sweep(sweep.load_sweep(path))
    assert summary["ran"] == 2 and summary["failed"] == 0
    assert [r["status"] for r in _rows(tmp_path / "sweep")] == ["done", "done"]
    scripts = sorted(p for p in jobs.glob("job.*") if p.suffix != ".log")
    assert 1 <= len(scripts) <= 2  # the cluster scaled to at most `jobs` PBS jobs
    text = scripts[0].read_text()
    assert "#PBS -q q" in text and "#PBS -l walltime=00:10:00" in text and "--resources trial=1" in text
    assert re.search(r"dask_worker tcp://[\d.]+:\d+ ", text)  # the live scheduler's address, filled in
    logs = "".join(p.with_name(p.name + ".log").read_text() for p in scripts)
    assert "Starting established connection" in logs  # a worker really joined from the job script
    for t in (tmp_path / "sweep" / "trials").iterdir():
        assert json.loads((t / "trial.json").read_text())["status"] == "done"
