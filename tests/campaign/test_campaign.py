import importlib.util
import json
import logging
import os
from pathlib import Path

import pytest
import yaml

from pcna_seg.campaign import FINGERPRINT, describe_changes, plan_campaign, plan_decisions, run_campaign
from pcna_seg.campaign.staged import split_opts
from pcna_seg.data.converters import get_converter
from pcna_seg.data.synthetic import get_writer
from pcna_seg.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs/campaigns/quick_pcna_staged.yaml")
TINY = [
    "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "100",
    "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0", "INPUT.SCALE.FACTOR", "0.5",
]  # fmt: skip


def test_split_opts_keeps_literals_whole():
    assert split_opts("INPUT.CHANNELS ['pcna', 'dic'] SOLVER.STEPS (5, 9) OUTPUT_DIR 'a b'") == [
        "INPUT.CHANNELS", "['pcna', 'dic']", "SOLVER.STEPS", "(5, 9)", "OUTPUT_DIR", "a b",
    ]  # fmt: skip


def test_plan_chains_weights_and_checks_every_stage(tmp_path):
    _, stages = plan_campaign(QUICK, ["OUTPUT_DIR", str(tmp_path)])
    assert [s.index for s in stages] == [1, 2, 3]
    assert "MODEL.WEIGHTS" not in stages[0].opts
    w2 = stages[1].opts[stages[1].opts.index("MODEL.WEIGHTS") + 1]
    assert w2 == str(stages[0].final_weights)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"CAMPAIGN": {"STAGES": ["../x.yaml"]}, "OUTPUT_DIR": str(tmp_path)}), encoding="utf-8"
    )
    with pytest.raises(ConfigError, match="x.yaml.*not found"):
        plan_campaign(bad)
    wrong = tmp_path / "wrong.yaml"
    stage = str((tmp_path / "../" / "s.yaml").resolve())
    (tmp_path / "../s.yaml").resolve().write_text("SOLVER:\n  MAX_ITER: 3\n")
    wrong.write_text(yaml.safe_dump({"CAMPAIGN": {"STAGES": [stage], "STAGE_OPTS": ["SOLVER.MAX_ITERS 4"]}}))
    with pytest.raises(ConfigError, match=r"Stage 1 .*did you mean SOLVER\.MAX_ITER"):
        plan_campaign(wrong)


def _prepare(root, fmt, name, **opts):
    get_writer(fmt)(root / "raw" / fmt, seed=1, **opts)
    get_converter(fmt)(root / "raw" / fmt, root / name, progress=False, val_fraction=0.34)


STAGE_DIRS = ("1_quick_stage1_kaggle", "2_quick_stage2_deepcell", "3_quick_stage3_pcna")


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory):
    """The quick 3-stage campaign trained once (2 iterations a stage) on tiny synthetic data."""
    root = tmp_path_factory.mktemp("campaign")
    _prepare(root, "dsb2018", "dsb2018", n_images=4)
    _prepare(root, "deepcell_npz", "deepcell", n_images=6, frames_per_movie=2)
    _prepare(root, "pcna_masks", "pcna_stage3", n_movies=3, n_frames=2, height=128, width=128)
    out = root / "campaign"
    opts = ["DATASETS.ROOT", str(root), "OUTPUT_DIR", str(out), *TINY]
    return root, out, opts, run_campaign(QUICK, opts)


def _mtimes(out):
    return [(out / d / "model_final.pth").stat().st_mtime_ns for d in STAGE_DIRS]


@pytest.mark.slow
def test_quick_campaign_runs_chains_and_skips_on_rerun(campaign, caplog):
    _, out, opts, summary = campaign
    assert [r["was"] for r in summary["stages"]] == ["todo", "todo", "todo"]
    assert [r["action"] for r in summary["stages"]] == ["train", "train", "train"]
    finals = [out / d / "model_final.pth" for d in STAGE_DIRS]
    assert all(f.is_file() for f in finals)
    assert all((out / d / FINGERPRINT).is_file() for d in STAGE_DIRS)
    cfg3 = yaml.safe_load((finals[2].parent / "config.yaml").read_text())
    assert cfg3["MODEL"]["WEIGHTS"] == str(finals[1])  # stage 3 started from stage 2
    assert cfg3["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 3
    written = json.loads((out / "campaign_summary.json").read_text())
    assert len(written["stages"]) == 3 and all("metrics" in r for r in written["stages"])
    assert "segm/AP50" in next(iter(written["stages"][2]["metrics"].values()))
    row3 = written["stages"][2]
    assert row3["iterations"] == 2 and row3["iterations_done"] == 2 and row3["wall_s"] > 0
    assert row3["data"]["classes"] == ["G1/G2", "S", "M"] and row3["data"]["train"][0]["images"] >= 1
    assert "total_loss" in row3["final_losses"]
    # each stage ran in its own process and logged only into its own folder: no later stage's lines
    for i, d in enumerate(STAGE_DIRS):
        log = (out / d / "log.txt").read_text()
        assert str(out / d) in log and all(later not in log for later in STAGE_DIRS[i + 1 :]), d
    md = (out / "campaign_report.md").read_text()
    for png in ("loss_curves.png", "heldout_metrics.png"):
        assert f"]({png})" in md and (out / png).stat().st_size > 1000
    assert "| 3_quick_stage3_pcna | pcna_stage3_val |" in md and (out / "report_overlays").is_dir()
    mtimes = _mtimes(out)
    with caplog.at_level(logging.INFO, logger="pcna_seg.campaign"):
        again = run_campaign(QUICK, opts)
    assert [r["was"] for r in again["stages"]] == ["done", "done", "done"]
    assert [r["action"] for r in again["stages"]] == ["skip", "skip", "skip"]
    assert sum("unchanged: skipping" in r.getMessage() for r in caplog.records) == 3
    assert _mtimes(out) == mtimes  # nothing retrained


def _campaign_tool():
    spec = importlib.util.spec_from_file_location("run_campaign_tool", ROOT / "tools/run_campaign.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_changed_stages_refused_and_retrained_with_overwrite(campaign, capsys):
    root, out, opts, _ = campaign
    mtimes = _mtimes(out)
    # a dataset file of stage 3 changed (re-prepared): stage 3 alone is stale
    train3 = root / "pcna_stage3" / "train.json"
    st = train3.stat()
    os.utime(train3, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(
        ConfigError, match=r"Stage 3 \(quick_stage3_pcna\).*stale: dataset file .*train\.json"
    ):
        run_campaign(QUICK, opts)
    os.utime(train3, ns=(st.st_atime_ns, st.st_mtime_ns))
    # the weights stage 3 starts from changed
    w2 = out / STAGE_DIRS[1] / "model_final.pth"
    saved = w2.read_bytes()
    w2.write_bytes(saved + b"\0")
    with pytest.raises(
        ConfigError, match=r"Stage 3 .*the weights it starts from .*model_final\.pth\) changed"
    ):
        run_campaign(QUICK, opts)
    w2.write_bytes(saved)
    os.utime(w2, ns=(mtimes[1], mtimes[1]))
    # an override changed: stage 1 stale (and the stages starting from it), one line from the tool
    lr = [*opts, "SOLVER.BASE_LR", "0.0123"]
    with pytest.raises(SystemExit) as info:
        _campaign_tool().main(["--config-file", QUICK, *lr])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert info.value.code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "Stage 1 (quick_stage1_kaggle)" in lines[0] and "SOLVER.BASE_LR" in lines[0]
    assert "0.0123" in lines[0] and "--overwrite" in lines[0] and "also stale: stage 2" in lines[0]
    assert _mtimes(out) == mtimes  # refused before anything trained
    _campaign_tool().main(["--config-file", QUICK, *lr, "--overwrite"])
    capsys.readouterr()
    assert all(new != old for new, old in zip(_mtimes(out), mtimes))  # all three retrained
    written = json.loads((out / "campaign_summary.json").read_text())
    assert [r["action"] for r in written["stages"]] == ["retrain", "retrain", "retrain"]
    assert "SOLVER.BASE_LR" in written["stages"][0]["reason"] and "stage 1" in written["stages"][1]["reason"]
    fp1 = json.loads((out / STAGE_DIRS[0] / FINGERPRINT).read_text())
    assert fp1["config"]["SOLVER"]["BASE_LR"] == pytest.approx(0.0123)
    cfg1 = yaml.safe_load((out / STAGE_DIRS[0] / "config.yaml").read_text())
    assert cfg1["SOLVER"]["BASE_LR"] == pytest.approx(0.0123)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left
    assert [r["action"] for r in run_campaign(QUICK, lr)["stages"]] == ["skip", "skip", "skip"]


def test_output_without_fingerprint_is_stale(tmp_path):
    _, stages = plan_campaign(QUICK, ["OUTPUT_DIR", str(tmp_path / "c"), "DATASETS.ROOT", str(tmp_path)])
    assert [d.action for d in plan_decisions(stages, overwrite=False)] == ["train", "train", "train"]
    stages[0].output_dir.mkdir(parents=True)
    (stages[0].output_dir / "model_final.pth").write_bytes(b"made by an older version")
    with pytest.raises(ConfigError, match=rf"Stage 1 .*no {FINGERPRINT}.*--overwrite"):
        plan_decisions(stages, overwrite=False)
    stages[1].output_dir.mkdir(parents=True)
    (stages[1].output_dir / ".model.abc.tmp.pth").write_bytes(b"")  # a leftover is no output
    decisions = plan_decisions(stages, overwrite=True)
    assert [d.action for d in decisions] == ["retrain", "train", "train"]


def test_describe_changes_names_keys_weights_and_data():
    old = {
        "config": {"SOLVER": {"BASE_LR": 0.01, "MAX_ITER": 5}, "MODEL": {"WEIGHTS": "w.pth"}},
        "weights": {"path": "w.pth", "digest": "aaaa"},
        "datasets": {"d_train": ["d/train.json", 10, 1]},
    }
    new = {
        "config": {"SOLVER": {"BASE_LR": 0.02, "MAX_ITER": 5, "GAMMA": 0.1}, "MODEL": {"WEIGHTS": "w.pth"}},
        "weights": {"path": "w.pth", "digest": "bbbb"},
        "datasets": {"d_train": ["d/train.json", 11, 2]},
    }
    assert describe_changes(old, new) == [
        "config changed: SOLVER.BASE_LR 0.01 -> 0.02, SOLVER.GAMMA '(unset)' -> 0.1",
        "the weights it starts from (w.pth) changed",
        "dataset file d/train.json (d_train) changed",
    ]
    assert describe_changes(old, old) == []


def test_stage_opts_must_be_strings(tmp_path):
    from pcna_seg.campaign.staged import plan_campaign

    stage = ROOT / "configs/quick_schedules/quick_stage1_kaggle.yaml"
    camp = tmp_path / "c.yaml"
    camp.write_text(f"CAMPAIGN:\n  STAGES: ['{stage}']\n  STAGE_OPTS:\n    - [SOLVER.BASE_LR, 0.1]\n")
    with pytest.raises(ConfigError, match="STAGE_OPTS entry 1 .* must be one string"):
        plan_campaign(camp)
