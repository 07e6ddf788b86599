import json

import pytest
import yaml

from pcna_seg.campaign import plan_campaign, run_campaign
from pcna_seg.campaign.staged import split_opts
from pcna_seg.data.converters import get_converter
from pcna_seg.data.synthetic import get_writer
from pcna_seg.errors import ConfigError

QUICK = "configs/campaigns/quick_pcna_staged.yaml"
TINY = [
    "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "100",
    "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
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


@pytest.mark.slow
def test_quick_campaign_runs_chains_and_skips_on_rerun(tmp_path):
    _prepare(tmp_path, "dsb2018", "dsb2018", n_images=4)
    _prepare(tmp_path, "deepcell_npz", "deepcell", n_images=6, frames_per_movie=2)
    _prepare(tmp_path, "pcna_masks", "pcna_stage3", n_movies=3, n_frames=2, height=128, width=128)
    out = tmp_path / "campaign"
    opts = ["DATASETS.ROOT", str(tmp_path), "OUTPUT_DIR", str(out), *TINY]
    summary = run_campaign(QUICK, opts)
    assert [r["was"] for r in summary["stages"]] == ["todo", "todo", "todo"]
    finals = [
        out / d / "model_final.pth"
        for d in ("1_quick_stage1_kaggle", "2_quick_stage2_deepcell", "3_quick_stage3_pcna")
    ]
    assert all(f.is_file() for f in finals)
    cfg3 = yaml.safe_load((finals[2].parent / "config.yaml").read_text())
    assert cfg3["MODEL"]["WEIGHTS"] == str(finals[1])  # stage 3 started from stage 2
    assert cfg3["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 3
    written = json.loads((out / "campaign_summary.json").read_text())
    assert len(written["stages"]) == 3 and all("metrics" in r for r in written["stages"])
    assert "segm/AP50" in next(iter(written["stages"][2]["metrics"].values()))
    mtimes = [f.stat().st_mtime_ns for f in finals]
    again = run_campaign(QUICK, opts)
    assert [r["was"] for r in again["stages"]] == ["done", "done", "done"]
    assert [f.stat().st_mtime_ns for f in finals] == mtimes  # nothing retrained
