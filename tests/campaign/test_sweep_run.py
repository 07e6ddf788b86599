"""Sweeps end to end on tiny synthetic live/dead tiles: a 2x2 grid through dask (LocalCluster, 2
workers) completes and a rerun trains nothing; a killed trial resumes from its checkpoint; a
failing trial is recorded with its error and does not stop the others."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from _cli import load_tool

from pcna_seg.campaign import sweep
from pcna_seg.config import load_config
from pcna_seg.config.config import config_to_dict
from pcna_seg.data.synthetic.write_livedead import write as write_livedead
from pcna_seg.unet.tiling import run_tiling

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "MODEL.DEVICE": "cpu", "UNET.DEPTH": 1, "UNET.BASE_WIDTH": 2, "UNET.DATA.BATCH_SIZE": 8,
    "UNET.DATA.NUM_WORKERS": 0, "UNET.EVAL.PR_THRESHOLDS": 11, "UNET.EVAL.OVERLAY_TILES": 2,
    "UNET.EVAL.OVERLAY_PERIOD": 100, "UNET.SOLVER.EPOCHS": 1, "UNET.SOLVER.SCHEDULER": "none",
    "UNET.TILING.TILE": 32, "UNET.TILING.STRIDE": 32,
}  # fmt: skip


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sweep_data")
    write_livedead(root / "frames", wells=("A1", "A2", "B1"), timepoints=1, height=64, width=64, density=2e-3)
    opts = ["UNET.TILING.TILE", "32", "UNET.TILING.STRIDE", "32", "UNET.TILING.WORKERS", "0",
            "UNET.TILING.VAL_FRACTION", "0.34"]  # fmt: skip
    return run_tiling(load_config(opts=opts), root / "frames", root / "t.h5", progress=False)


def _sweep(tmp_path: Path, tiles: dict[str, Path], grid: dict, executor: dict, **opts) -> Path:
    data = {
        "name": "tiny", "trainer": "unet", "base": str(ROOT / "configs/unet/livedead_quick.yaml"),
        "opts": {**TINY, "UNET.DATA.TRAIN_H5": str(tiles["train"]), "UNET.DATA.VAL_H5": str(tiles["val"]),
                 **opts},
        "output_dir": str(tmp_path / "sweep"), "metric": "pr_auc_mean", "mode": "max", "grid": grid,
        "resources": {"cpus": 1, "gpus": 0}, "executor": executor,
    }  # fmt: skip
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "sweep_results.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_grid_through_dask_local_cluster_then_rerun_runs_nothing(tmp_path, tiles, capsys) -> None:
    grid = {"UNET.SOLVER.OPTIMIZER": ["sgd", "adam"], "UNET.SOLVER.BASE_LR": [0.01, 0.1]}
    path = _sweep(tmp_path, tiles, grid, {"kind": "dask", "workers": 2})
    tool = load_tool("sweep")
    tool.main([str(path)])
    assert "ran 4 trials (0 failed), skipped 0" in capsys.readouterr().out
    out = tmp_path / "sweep"
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["done"] * 4 and [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    scores = [float(r["pr_auc_mean"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    assert {(r["UNET.SOLVER.OPTIMIZER"], r["UNET.SOLVER.BASE_LR"]) for r in rows} == {
        ("sgd", "0.01"), ("sgd", "0.1"), ("adam", "0.01"), ("adam", "0.1")}  # fmt: skip
    hosts = set()
    for r in rows:
        tdir = out / "trials" / r["trial"]
        cfg = yaml.safe_load((tdir / "config.yaml").read_text())
        assert cfg["UNET"]["SOLVER"]["OPTIMIZER"] == r["UNET.SOLVER.OPTIMIZER"]
        assert (tdir / "run" / "model_final.pth").is_file()
        hosts.add(json.loads((tdir / "trial.json").read_text())["host"])
    report = (out / "sweep_report.md").read_text()
    assert "| 1 | `" + rows[0]["trial"] + "` | done |" in report
    best = config_to_dict(load_config(out / "best_config.yaml"))  # a ready config: the best trial's
    ran = config_to_dict(load_config(out / "trials" / rows[0]["trial"] / "config.yaml"))
    assert best.pop("OUTPUT_DIR") != ran.pop("OUTPUT_DIR") and best == ran
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["sweep_UNET_SOLVER_BASE_LR.png", "sweep_UNET_SOLVER_OPTIMIZER.png",
                    "sweep_heatmap_UNET_SOLVER_OPTIMIZER__UNET_SOLVER_BASE_LR.png"]  # fmt: skip
    finals = {p: p.stat().st_mtime_ns for p in out.glob("trials/*/run/model_final.pth")}
    tool.main([str(path)])
    assert "ran 0 trials (0 failed), skipped 4 finished" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("trials/*/run/model_final.pth")} == finals
    tool.main([str(path), "--status"])
    assert "4 done" in capsys.readouterr().out


def _wait_for(cond, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
def test_killed_trial_resumes_and_a_failing_trial_does_not_stop_the_sweep(tmp_path, tiles, capsys) -> None:
    grid = {"UNET.DATA.VAL_H5": [str(tiles["val"]), str(tmp_path / "missing_val.h5")]}
    path = _sweep(tmp_path, tiles, grid, {"kind": "local", "workers": 2}, **{"UNET.SOLVER.EPOCHS": 40})
    spec = sweep.load_sweep(path)
    good, bad = sweep.expand_trials(spec)
    run = threading.Thread(target=sweep.run_sweep, args=(spec,))
    run.start()
    metrics = good.run_dir / "metrics.json"

    def _records() -> list[dict]:
        try:
            return [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        except (OSError, ValueError):
            return []

    _wait_for(lambda: len(_records()) >= 3 and "pid" in sweep.ex.read_record(good.dir))
    assert sweep.trial_status(good) == "running"
    os.kill(sweep.ex.read_record(good.dir)["pid"], signal.SIGKILL)  # the trial dies mid-run
    run.join(timeout=120)
    before = _records()
    assert 3 <= len(before) < 40 and all("seconds" in r for r in before)
    rec = sweep.ex.read_record(good.dir)
    assert rec["status"] == "failed" and rec["error"] == "killed by signal SIGKILL"
    failed = sweep.ex.read_record(bad.dir)
    assert failed["status"] == "failed" and "missing_val.h5" in failed["error"]
    assert failed["error"].startswith("exit code 1: error:")
    load_tool("sweep").main([str(path), "--status"])
    assert capsys.readouterr().out.count("failed") >= 2
    # the rerun continues the killed trial from its checkpoint (the broken one fails again)
    summary = sweep.run_sweep(sweep.load_sweep(path))
    assert summary["ran"] == 2 and summary["failed"] == 1
    rec = sweep.ex.read_record(good.dir)
    assert rec["status"] == "done" and rec["attempts"] == 2
    after = _records()
    assert [r["epoch"] for r in after] == list(range(1, 41))
    # continued, not restarted: the epochs checkpointed before the kill were not trained again
    # (a retrained epoch would carry a new wall time in "seconds")
    assert after[: len(before) - 1] == before[:-1]
    rows = _rows(tmp_path / "sweep")
    assert [r["status"] for r in rows] == ["done", "failed"] and "missing_val.h5" in rows[1]["error"]
