"""Sweep spec, trial expansion and dry runs without training: bad input is one clear error before
any trial starts; --dry-run with a PBS (or SLURM) cluster section prints a valid job script."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from _cli import expect_error, load_tool

from pcna_seg.campaign import cluster, sweep
from pcna_seg.campaign.staged import plan_campaign, write_pbs_scripts
from pcna_seg.campaign.sweep_report import write_results
from pcna_seg.config.defaults import get_default_config
from pcna_seg.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
UNET_BASE = str(ROOT / "configs/unet/livedead_quick.yaml")
NET_BASE = str(ROOT / "configs/quick_schedules/quick_stage1_kaggle.yaml")


def _write(tmp_path: Path, **spec) -> Path:
    data = {
        "name": "t",
        "trainer": "unet",
        "base": UNET_BASE,
        "output_dir": str(tmp_path / "out"),
        "metric": "pr_auc_mean",
        "grid": {"UNET.SOLVER.BASE_LR": [0.01, 0.05]},
    }
    data.update(spec)
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "spec, match",
    [
        (
            {"grid": {"UNET.SOLVER.BASE_LRR": [0.1]}},
            r"'UNET.SOLVER.BASE_LRR' is not a config key; did you mean UNET.SOLVER.BASE_LR\?",
        ),
        ({"grid": {"UNET.SOLVER": [0.1]}}, r"'UNET.SOLVER' is not a config key"),
        ({"grid": {"UNET.DROPOUT": []}}, r"grid axis UNET.DROPOUT in .* has no values"),
        ({"grid": {}}, r"has no axes"),
        ({"random": {"samples": 2, "axes": {}}}, r"random in .* has no axes"),
        (
            {"random": {"axes": {"UNET.DROPOUT": {"gauss": [0, 1]}}}},
            r"Unknown key 'gauss' .*valid keys: uniform",
        ),
        ({"random": {"axes": {"UNET.DROPOUT": {"uniform": [0.5, 0.1]}}}}, r"low <= high"),
        (
            {"metric": "pr_auc_men"},
            r"'pr_auc_men' .* not reported by U-Net training; did you mean pr_auc_mean\?",
        ),
        ({"metric": "segm/AP5", "trainer": "train_net", "base": NET_BASE}, r"not reported by Mask R-CNN"),
        ({"trainer": "unet2"}, r"trainer in .* must be one of unet, train_net, campaign"),
        (
            {"executor": {"kind": "dask", "cluster": {"kind": "pbs", "queu": "x"}}},
            r"Unknown key 'queu' .*did you mean queue\?",
        ),
        ({"executor": {"kind": "dask", "cluster": {"kind": "lsf"}}}, r"kind must be one of pbs, slurm"),
        ({"opts": {"UNET.SOLVER.EPOCH": 2}}, r"did you mean UNET.SOLVER.EPOCHS\?"),
        ({"grid": {"UNET.DEPTH": [2, "deep"]}}, r"Trial .*UNET.DEPTH expects int"),
    ],
)
def test_bad_sweeps_fail_before_any_trial(tmp_path: Path, spec: dict, match: str) -> None:
    path = _write(tmp_path, **spec)
    with pytest.raises(ConfigError, match=match):
        sweep.plan(sweep.load_sweep(path))
    assert not (tmp_path / "out").exists()  # nothing was written


def test_missing_dask_jobqueue_is_one_error(tmp_path: Path, monkeypatch, capsys) -> None:
    real = cluster.importlib.import_module

    def no_jobqueue(name: str, *a):
        if name.startswith("dask_jobqueue"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a)

    monkeypatch.setattr(cluster.importlib, "import_module", no_jobqueue)
    path = _write(tmp_path, executor={"kind": "dask", "cluster": {"kind": "slurm", "queue": "gpu"}})
    expect_error(
        capsys, "sweep", [str(path), "--dry-run"], "SLURM cluster needs dask-jobqueue", "pip install"
    )
    assert not (tmp_path / "out").exists()


def test_trials_grid_random_seeded_and_identical_configs_merged(tmp_path: Path) -> None:
    rnd = {
        "samples": 3,
        "seed": 7,
        "axes": {
            "UNET.DROPOUT": {"uniform": [0.0, 0.5]},
            "UNET.SOLVER.WEIGHT_DECAY": {"loguniform": [1e-5, 1e-3]},
            "UNET.DATA.BATCH_SIZE": {"choice": [8, 16]},
            "UNET.DEPTH": {"randint": [2, 3]},
        },
    }
    # 0.05 and 5e-2 resolve to the same config: one trial, not two
    spec = sweep.load_sweep(_write(tmp_path, grid={"UNET.SOLVER.BASE_LR": [0.01, 0.05, 5e-2]}, random=rnd))
    trials = sweep.expand_trials(spec)
    assert len(trials) == 2 * 3
    again = sweep.expand_trials(sweep.load_sweep(spec.file))
    assert [t.id for t in again] == [t.id for t in trials]  # same seed, same trials, same folders
    for t in trials:
        assert 0.0 <= t.values["UNET.DROPOUT"] <= 0.5 and 1e-5 <= t.values["UNET.SOLVER.WEIGHT_DECAY"] <= 1e-3
        assert t.values["UNET.DATA.BATCH_SIZE"] in (8, 16) and t.values["UNET.DEPTH"] in (2, 3)
        cfg = yaml.safe_load(t.config_text)
        assert cfg["UNET"]["DROPOUT"] == t.values["UNET.DROPOUT"]
        assert cfg["OUTPUT_DIR"] == str((t.dir / "run").resolve())
        assert t.dir.name == t.id and re.fullmatch(r"[0-9a-f]{12}", t.id)
    other = sweep.expand_trials(sweep.load_sweep(_write(tmp_path, random={**rnd, "seed": 8})))
    assert {t.values["UNET.DROPOUT"] for t in other}.isdisjoint({t.values["UNET.DROPOUT"] for t in trials})


PBS_DIRECTIVE = re.compile(r"^#PBS -(N \S{1,236}|q \S+|A \S+|l \S+|j oe|e \S+|o \S+|W \S+|m \w+|M \S+)$")


def _check_pbs_script(text: str) -> list[str]:
    """A PBS job script qsub accepts: shebang, then only #PBS directives of known form up to the
    first command, walltime HH:MM:SS, a select statement, and bash syntax that parses."""
    lines = text.splitlines()
    assert lines[0].startswith("#!") and "bash" in lines[0]
    body = [ln for ln in lines[1:] if ln.strip()]
    directives = [ln for ln in body if ln.startswith("#PBS")]
    first_cmd = next(i for i, ln in enumerate(body) if not ln.startswith("#"))
    assert all(ln.startswith("#PBS") for ln in body[:first_cmd]) and directives == body[:first_cmd]
    for ln in directives:
        assert PBS_DIRECTIVE.match(ln), ln
    walltimes = [ln for ln in directives if ln.startswith("#PBS -l walltime=")]
    assert len(walltimes) == 1 and re.fullmatch(r"#PBS -l walltime=\d+:\d\d:\d\d", walltimes[0])
    assert any(re.match(r"#PBS -l select=\d+(:\w+=\w+)+$", ln) for ln in directives)
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    return directives


def test_dry_run_prints_valid_pbs_worker_script_without_a_cluster(tmp_path: Path, capsys) -> None:
    section = {
        "kind": "pbs",
        "queue": "gpuq",
        "account": "proj42",
        "walltime": "02:00:00",
        "resource_spec": "select=1:ncpus=4:ngpus=1:mem=16gb",
        "job_extra_directives": ["-j oe"],
        "local_directory": "$TMPDIR",
        "job_script_prologue": ["module load cuda"],
        "jobs": 3,
    }
    path = _write(
        tmp_path, executor={"kind": "dask", "cluster": section}, resources={"cpus": 4, "memory": "16GB"}
    )
    load_tool("sweep").main([str(path), "--dry-run"])
    out = capsys.readouterr().out
    assert "2 pending" in out and "dask-jobqueue PBS cluster, 3 job(s)" in out
    script = out[out.index("#!/usr/bin/env bash") :]
    directives = _check_pbs_script(script)
    assert {
        "#PBS -q gpuq",
        "#PBS -A proj42",
        "#PBS -l select=1:ncpus=4:ngpus=1:mem=16gb",
        "#PBS -l walltime=02:00:00",
        "#PBS -j oe",
    } <= set(directives)
    assert "module load cuda" in script and f"cd {ROOT}" in script
    worker = script.strip().splitlines()[-1]
    assert "-m distributed.cli.dask_worker tcp://SCHEDULER-ADDRESS:8786" in worker
    assert "--resources trial=1" in worker and "--local-directory $TMPDIR" in worker
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_dry_run_slurm_script(tmp_path: Path, capsys) -> None:
    section = {"kind": "slurm", "queue": "gpu", "account": "lab", "job_extra_directives": ["--qos=short"]}
    path = _write(
        tmp_path,
        executor={"kind": "dask", "cluster": section},
        resources={"cpus": 2, "gpus": 1, "walltime": "00:20:00"},
    )
    load_tool("sweep").main([str(path), "--dry-run"])
    script = capsys.readouterr().out.split("run time):\n", 1)[1]
    for line in (
        "#SBATCH -p gpu",
        "#SBATCH -A lab",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH -t 00:20:00",
        "#SBATCH --qos=short",
        "#SBATCH --gres=gpu:1",
    ):
        assert line in script.splitlines(), line
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_campaign_pbs_scripts_share_the_template(tmp_path: Path) -> None:
    ccfg, stages = plan_campaign(
        ROOT / "configs/campaigns/quick_pcna_staged.yaml", ["OUTPUT_DIR", str(tmp_path)]
    )
    submit = write_pbs_scripts(ccfg, stages)
    scripts = sorted((tmp_path / "pbs").glob("stage*.pbs"))
    assert len(scripts) == 3 and "qsub -W depend=afterok:$J1" in submit.read_text()
    for st, script in zip(stages, scripts):
        text = script.read_text()
        directives = _check_pbs_script(text)
        assert f"#PBS -N {ccfg.CAMPAIGN.NAME}_{st.index}" in directives
        assert "#PBS -l walltime=24:00:00" in directives and "#PBS -l select=1:ncpus=8:ngpus=1" in directives
        assert text.strip().splitlines()[-1].endswith(f"OUTPUT_DIR {st.output_dir}")
        spec = cluster.pbs_spec_from_resources(ccfg.CAMPAIGN.PBS_RESOURCES, "x", [])
        worker = cluster.job_script(spec).splitlines()  # a sweep's PBS worker from the same description
        same = [ln for ln in worker if ln.startswith("#PBS") and not ln.startswith("#PBS -N")]
        assert same == [ln for ln in directives if not ln.startswith("#PBS -N")]


def test_status_of_an_unstarted_sweep_and_bad_flags(tmp_path: Path, capsys) -> None:
    path = _write(tmp_path)
    load_tool("sweep").main([str(path), "--status"])
    out = capsys.readouterr().out
    assert "2 pending" in out and out.count("pending ") == 2
    expect_error(capsys, "sweep", [str(path), "--workers", "0"], "--workers must be >= 1")
    expect_error(capsys, "sweep", [str(tmp_path / "nope.yaml")], "nope.yaml")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.txt").write_text("not a sweep")
    expect_error(capsys, "sweep", [str(path)], "holds no sweep")


def _fake_done(trial, metrics: dict) -> None:
    """A trial record as execute_trial writes it for a finished trial (no training here)."""
    trial.dir.mkdir(parents=True, exist_ok=True)
    rec = {
        "id": trial.id,
        "values": trial.values,
        "status": "done",
        "inputs": trial.inputs,
        "metrics": metrics,
        "wall_s": 1.0,
        "attempts": 1,
    }
    (trial.dir / "trial.json").write_text(json.dumps(rec))
    (trial.dir / "config.yaml").write_text(trial.config_text)


def test_changed_inputs_make_finished_trials_stale(tmp_path: Path) -> None:
    h5 = [tmp_path / "train.h5", tmp_path / "val.h5"]
    for f in h5:
        f.write_bytes(b"tiles")
    opts = {"UNET.DATA.TRAIN_H5": str(h5[0]), "UNET.DATA.VAL_H5": str(h5[1])}
    spec = sweep.load_sweep(_write(tmp_path, opts=opts))
    trials = sweep.expand_trials(spec)
    for t in trials:
        _fake_done(t, {"pr_auc_mean": 0.5})
    assert [sweep.trial_status(t) for t in trials] == ["done", "done"]
    st = h5[1].stat()
    os.utime(h5[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the validation tiles were remade
    assert [sweep.trial_status(t) for t in sweep.expand_trials(spec)] == ["stale", "stale"]
    with pytest.raises(
        ConfigError, match=r"2 finished trial\(s\) .* changed since .*input files.*--overwrite"
    ):
        sweep.run_sweep(spec)
    os.utime(h5[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [sweep.trial_status(t) for t in sweep.expand_trials(spec)] == ["done", "done"]
    # a project default changed since the trials ran (the saved config says what they ran with)
    cfg = yaml.safe_load(trials[0].config_text)
    cfg["UNET"]["SOLVER"]["MOMENTUM"] = 0.5
    (trials[0].dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert [sweep.trial_status(t) for t in sweep.expand_trials(spec)] == ["stale", "done"]
    assert sweep.changes(trials[0], {"inputs": trials[0].inputs}) == [
        "config UNET.SOLVER.MOMENTUM 0.5 -> 0.9"
    ]
    del cfg["UNET"]["SOLVER"]["MOMENTUM"]  # a key added to the project since: not a change
    (trials[0].dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert sweep.trial_status(sweep.expand_trials(spec)[0]) == "done"


def test_trial_identity_ignores_values_equal_to_the_defaults(tmp_path: Path) -> None:
    base = sweep.expand_trials(sweep.load_sweep(_write(tmp_path)))
    momentum = get_default_config().UNET.SOLVER.MOMENTUM  # setting a key to its default: same trial
    same = sweep.expand_trials(sweep.load_sweep(_write(tmp_path, opts={"UNET.SOLVER.MOMENTUM": momentum})))
    other = sweep.expand_trials(sweep.load_sweep(_write(tmp_path, opts={"UNET.SOLVER.MOMENTUM": 0.5})))
    assert [t.id for t in same] == [t.id for t in base] and not {t.id for t in other} & {t.id for t in base}


def test_results_ranked_and_a_metric_no_trial_reports(tmp_path: Path) -> None:
    spec = sweep.load_sweep(
        _write(tmp_path, grid={"UNET.SOLVER.BASE_LR": [0.01, 0.05, 0.1]}, mode="min", metric="val_loss")
    )
    trials = sweep.expand_trials(spec)
    recs = {
        trials[0].id: {"status": "done", "metrics": {"val_loss": 0.4}, "wall_s": 2.0, "attempts": 1},
        trials[1].id: {"status": "failed", "error": "exit code 1: error: boom", "attempts": 1},
        trials[2].id: {"status": "done", "metrics": {"val_loss": 0.2}, "wall_s": 3.0, "attempts": 1},
    }
    spec.output_dir.mkdir(parents=True)
    out = write_results(spec, trials, recs, final=True)
    rows = list(csv.DictReader(out["csv"].read_text(encoding="utf-8").splitlines()))
    assert [(r["rank"], r["status"], r["val_loss"]) for r in rows] == [
        ("1", "done", "0.2"),
        ("2", "done", "0.4"),
        ("", "failed", ""),
    ]
    assert rows[2]["error"] == "exit code 1: error: boom"
    report = out["report"].read_text()
    assert "## Failed trials" in report and "boom" in report and "val_loss = 0.2" in report
    assert yaml.safe_load(out["best_config"].read_text())["UNET"]["SOLVER"]["BASE_LR"] == 0.1
    recs = {t.id: {"status": "done", "metrics": {"val_los": 0.1}} for t in trials}
    with pytest.raises(
        ConfigError, match=r"No trial of .* reports the metric 'val_loss'; they report: val_los"
    ):
        write_results(spec, trials, recs, final=True)


def test_local_executor_gives_each_concurrent_trial_its_own_gpu(monkeypatch) -> None:
    import torch

    from pcna_seg.campaign import executors

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert executors._gpu_groups(1) == ["0", "1", "2", "3"] and executors._gpu_groups(2) == ["0,1", "2,3"]
    assert executors._gpu_groups(3) == ["0,1,2"] and executors._gpu_groups(0) == []
    seen: list[str] = []
    running: set[str] = set()

    def fake_trial(p: dict) -> dict:
        assert not p["gpus"] or p["gpus"] not in running  # no two trials on one GPU at the same time
        running.add(p["gpus"])
        seen.append(p["gpus"])
        time.sleep(0.05)
        running.discard(p["gpus"])
        return {"id": p["id"], "status": "done"}

    monkeypatch.setattr(executors, "execute_trial", fake_trial)
    done: list[dict] = []
    executors.LocalExecutor(workers=8, gpus_per_trial=2).run([{"id": str(i)} for i in range(6)], done.append)
    assert len(done) == 6 and sorted(set(seen)) == ["0,1", "2,3"]  # 2 at once: 4 GPUs / 2 per trial
    seen.clear()
    executors.LocalExecutor(workers=2, gpus_per_trial=0).run([{"id": "a"}, {"id": "b"}], done.append)
    assert seen == ["", ""]  # gpus: 0 hides every GPU from the trial


def test_status_tells_running_from_interrupted(tmp_path: Path) -> None:
    import fcntl

    trial = sweep.expand_trials(sweep.load_sweep(_write(tmp_path)))[0]
    assert sweep.trial_status(trial) == "pending"
    _fake_done(trial, {})
    rec = json.loads((trial.dir / "trial.json").read_text())
    (trial.dir / "trial.json").write_text(json.dumps({**rec, "status": "running"}))
    assert sweep.trial_status(trial) == "interrupted"  # its process died: no one holds the lock
    with open(trial.dir / ".trial.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        assert sweep.trial_status(trial) == "running"
        other = sweep.ex.execute_trial({"id": trial.id, "dir": str(trial.dir), "values": {}, "inputs": {}})
        assert other["status"] == "running"  # a second runner leaves it alone
    assert sweep.trial_status(trial) == "interrupted"


def test_plots_scatter_continuous_axes_and_heatmap_categorical_pairs(tmp_path: Path) -> None:
    rnd = {
        "samples": 4,
        "seed": 1,
        "axes": {"UNET.DROPOUT": {"uniform": [0.0, 0.5]}, "UNET.DATA.BATCH_SIZE": {"choice": [8, 16]}},
    }
    spec = sweep.load_sweep(_write(tmp_path, grid={"UNET.SOLVER.OPTIMIZER": ["sgd", "adam"]}, random=rnd))
    trials = sweep.expand_trials(spec)
    recs = {
        t.id: {"status": "done", "metrics": {"pr_auc_mean": 0.5 + t.values["UNET.DROPOUT"]}} for t in trials
    }
    spec.output_dir.mkdir(parents=True)
    pngs = [p.name for p in write_results(spec, trials, recs, final=True)["pngs"]]
    assert sorted(pngs) == sorted(
        [
            "sweep_UNET_SOLVER_OPTIMIZER.png",
            "sweep_UNET_DROPOUT.png",
            "sweep_UNET_DATA_BATCH_SIZE.png",
            "sweep_heatmap_UNET_SOLVER_OPTIMIZER__UNET_DATA_BATCH_SIZE.png",
        ]
    )
    assert all((spec.output_dir / p).stat().st_size > 5000 for p in pngs)


def test_missing_distributed_is_one_error(tmp_path: Path, monkeypatch, capsys) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)  # as if dask.distributed were not installed
    path = _write(tmp_path, executor={"kind": "dask", "workers": 2})
    expect_error(capsys, "sweep", [str(path)], "executor.kind dask needs dask.distributed", "pip install")
    assert not (tmp_path / "out").exists()
    spec = sweep.load_sweep(
        _write(tmp_path, trainer="train_net", base=NET_BASE, metric="segm/AP50", resources={"gpus": 2})
    )
    assert sweep.payload(spec, sweep.expand_trials(spec)[0])["args"][3:5] == ["--num-gpus", "2"]
