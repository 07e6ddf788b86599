"""Planning and checking a campaign before anything trains: seeds, START_FROM, folders, data,
class lists; and the report's tables and pictures from a made-up summary (no training)."""

import json
from pathlib import Path

import pytest
import yaml

from pcna_seg.campaign import plan_campaign, run_campaign
from pcna_seg.campaign.checks import check_campaign
from pcna_seg.campaign.compare import comparison_rows, comparison_table, mean_sd
from pcna_seg.campaign.report import render_markdown, write_report
from pcna_seg.data.converters import get_converter
from pcna_seg.data.synthetic import get_writer
from pcna_seg.errors import ConfigError
from tests._cli import expect_error

ROOT = Path(__file__).resolve().parents[2]
Q = ROOT / "configs/quick_schedules"


def _campaign(tmp_path: Path, **node) -> Path:
    node.setdefault("STAGES", [str(Q / "quick_stage1_kaggle.yaml"), str(Q / "quick_stage2_deepcell.yaml")])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"CAMPAIGN": node, "OUTPUT_DIR": str(tmp_path / "out")}), encoding="utf-8")
    return path


def _w(stage) -> str:
    return stage.start_weights


def test_seeds_repeat_each_chain_in_its_own_folder(tmp_path):
    _, stages = plan_campaign(_campaign(tmp_path, SEEDS=[3, 5], STAGE_NAMES=["nuc", "dc"]))
    assert [s.label for s in stages] == ["seed3/1_nuc", "seed3/2_dc", "seed5/1_nuc", "seed5/2_dc"]
    assert stages[1].output_dir == tmp_path / "out" / "seed3" / "2_dc"
    assert _w(stages[3]) == str(stages[2].final_weights)  # chained within its own seed
    assert stages[3].opts[stages[3].opts.index("SEED") + 1] == "5"
    _, one = plan_campaign(_campaign(tmp_path, SEEDS=[3, 5]), seeds=["7"])  # --seeds replaces the file's
    assert [s.label for s in one] == ["seed7/1_quick_stage1_kaggle", "seed7/2_quick_stage2_deepcell"]


def test_start_from_none_earlier_stage_or_file(tmp_path):
    stages3 = [str(Q / "quick_stage1_kaggle.yaml")] * 3
    _, st = plan_campaign(_campaign(tmp_path, STAGES=stages3, START_FROM=["", "none", "1"]))
    assert _w(st[0]) == "" and _w(st[1]) == "" and "MODEL.WEIGHTS" in st[1].opts
    assert _w(st[2]) == str(st[0].final_weights)
    with pytest.raises(ConfigError, match=r"START_FROM entry 2 .*'2'.*earlier stage \(1\.\.1\)"):
        plan_campaign(_campaign(tmp_path, STAGES=stages3, START_FROM=["", "2", ""]))
    with pytest.raises(ConfigError, match="START_FROM has 1 entries but CAMPAIGN.STAGES has 3"):
        plan_campaign(_campaign(tmp_path, STAGES=stages3, START_FROM=["none"]))


def test_repeated_seeds_and_shared_folders_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"CAMPAIGN.SEEDS of .*c\.yaml lists seed 1 more than once"):
        plan_campaign(_campaign(tmp_path, SEEDS=[0, 1, 1]))
    with pytest.raises(ConfigError, match="--seeds lists seed 2 more than once"):
        plan_campaign(_campaign(tmp_path), seeds=[2, 2])
    same = str(tmp_path / "shared")
    with pytest.raises(ConfigError, match=r"Stages 1 .* and 2 .* would both write into .*shared"):
        plan_campaign(_campaign(tmp_path, STAGE_OPTS=[f"OUTPUT_DIR {same}", f"OUTPUT_DIR {same}"]))


def test_seeds_tool_error_is_one_line(tmp_path, capsys):
    camp = str(_campaign(tmp_path))
    expect_error(capsys, "run_campaign", ["--config-file", camp, "--seeds", "0,1,0"], "seed 0 more than once")
    expect_error(
        capsys, "run_campaign", ["--config-file", camp, "--seeds", "0,x"], "--seeds must be integers"
    )


def _prepare(root: Path, fmt: str, name: str, **opts) -> None:
    get_writer(fmt)(root / "raw" / fmt, seed=1, **opts)
    get_converter(fmt)(root / "raw" / fmt, root / name, progress=False, val_fraction=0.5)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    _prepare(root, "dsb2018", "dsb2018", n_images=2)
    _prepare(root, "pcna_masks", "pcna_stage3", n_movies=2, n_frames=1, height=96, width=96)
    return root


def test_missing_dataset_refused_before_training(tmp_path, data_root):
    camp = _campaign(tmp_path)  # stage 2 needs deepcell_*, which data_root lacks
    with pytest.raises(
        ConfigError, match=r"Stage 2_quick_stage2_deepcell .*DATASETS.TRAIN names 'deepcell_train'"
    ):
        run_campaign(camp, ["DATASETS.ROOT", str(data_root)])
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_shrinking_class_list_refused(tmp_path, data_root):
    camp = _campaign(
        tmp_path, STAGES=[str(Q / "quick_stage3_pcna.yaml"), str(Q / "quick_stage1_kaggle.yaml")]
    )
    _, stages = plan_campaign(camp, ["DATASETS.ROOT", str(data_root)])
    with pytest.raises(
        ConfigError, match=r"2_quick_stage1_kaggle trains on 1 classes \['nucleus'\].*3 classes"
    ):
        check_campaign(stages)
    data = check_campaign(stages, strict=False)  # --dry-run: a warning, and the data still described
    assert data["1_quick_stage3_pcna"]["classes"] == ["G1/G2", "S", "M"]
    assert data["1_quick_stage3_pcna"]["train"][0]["split_by"] == "sequence"
    _, ok = plan_campaign(
        _campaign(tmp_path, STAGES=[str(Q / "quick_stage3_pcna.yaml"), str(Q / "quick_stage1_kaggle.yaml")],
                  START_FROM=["", "none"]),
        ["DATASETS.ROOT", str(data_root)],
    )  # fmt: skip
    assert check_campaign(ok)["2_quick_stage1_kaggle"]["test"][0]["name"] == "dsb2018_val"


def _fake_rows(tmp_path: Path) -> list[dict]:
    rows = []
    for seed, vals in ((0, (0.5, 0.7)), (1, (0.6, 0.9)), (2, (0.7, 0.8))):
        for k, (name, v) in enumerate((("a", vals[0]), ("b", vals[1])), start=1):
            out = tmp_path / f"seed{seed}" / f"{k}_{name}"
            out.mkdir(parents=True)
            lines = [{"iteration": i, "total_loss": 2.0 - i / 10, "time": 0.5} for i in range(0, 10, 3)]
            (out / "metrics.json").write_text("\n".join(json.dumps(e) for e in lines))
            rows.append({"index": k, "name": name, "seed": seed, "label": f"seed{seed}/{k}_{name}",
                         "output_dir": str(out), "action": "train", "was": "todo", "wall_s": 6.0,
                         "iterations": 10, "iterations_done": 10, "final_losses": {"total_loss": 1.1},
                         "data": {"classes": ["nucleus"], "train": [], "test": []},
                         "metrics": {"ds_val": {"segm/AP50": v, "cells/f1@0.5": v / 2}}})  # fmt: skip
    return rows


def test_comparison_mean_sd_and_every_value(tmp_path):
    rows = _fake_rows(tmp_path)
    comp = comparison_rows(rows)
    assert [c["variant"] for c in comp] == ["1_a", "2_b"]
    assert comp[0]["values"]["segm/AP50"] == [0.5, 0.6, 0.7]
    m, s = mean_sd([0.5, 0.6, 0.7])
    assert m == pytest.approx(0.6) and s == pytest.approx(0.1)
    table = comparison_table(comp)
    assert "| 1_a | 0,1,2 | 0.600 ± 0.100 (0.500, 0.600, 0.700) |" in table
    assert "0.800 ± 0.100 (0.700, 0.900, 0.800)" in table and "phase" not in table  # absent metric: no column


def test_report_links_pictures_that_exist(tmp_path):
    rows = _fake_rows(tmp_path)
    summary = {"campaign": "c", "campaign_file": "c.yaml", "seeds": [0, 1, 2], "stages": rows}
    pics = write_report(tmp_path, summary, overlays=0)
    md = Path(pics["report"]).read_text()
    assert Path(pics["loss_png"]).stat().st_size > 1000 and Path(pics["metrics_png"]).stat().st_size > 1000
    assert (
        "![Loss curves](loss_curves.png)" in md and "![Held-out metrics per stage](heldout_metrics.png)" in md
    )
    assert "| seed2/2_b | ds_val | – | 0.800 |" in md  # one held-out row per stage run
    assert "Comparison over seeds [0, 1, 2]" in md and "0.600 ± 0.100" in md
    assert "Phase confusion" not in render_markdown(summary, tmp_path, {})  # no picture, no link
